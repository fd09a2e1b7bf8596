package worker_test

import (
	"context"
	"errors"
	"fmt"
	"github.com/wxdomain/wxdomain/internal/ticket"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/wxdomain/wxdomain/internal/token"
	"github.com/wxdomain/wxdomain/internal/wechat"
	"github.com/wxdomain/wxdomain/worker"
)

func TestClassify(t *testing.T) {
	t.Parallel()
	api := func(code int) error { return &wechat.APIError{Code: code, Msg: "m"} }
	fetch := func(err error) error { return &token.FetchError{AppID: "wx1", Err: err} }
	tests := []struct {
		name       string
		give       error
		want       worker.Kind
		wantText   string
		wantResume worker.ResumeAt
	}{
		{"busy", api(-1), worker.KindRetry, "WeChat is busy (errcode -1: m)", 0},
		{"wrapped busy", fmt.Errorf("call: %w", api(-1)), worker.KindRetry, "busy", 0},
		{"not released", api(61028), worker.KindFail, "not released", 0},
		{"domain limit", api(65316), worker.KindFail, "limit", 0},
		{"invalid domains", api(9410016), worker.KindFail, "invalid domain", 0},
		{"invalid action", api(40052), worker.KindFail, "action", 0},
		{"unlisted errcode", api(12345), worker.KindFail, "errcode 12345", 0},
		{"invalid credential", api(40001), worker.KindRefreshToken, "token", 0},
		{"invalid token", api(40014), worker.KindRefreshToken, "token", 0},
		{"token expired", api(42001), worker.KindRefreshToken, "token", 0},
		{"transport", &wechat.TransportError{Op: "modify_wxa_jump_domain", StatusCode: 502, Err: errors.New("x")}, worker.KindRetry, "could not reach WeChat", 0},
		{"no ticket", fetch(fmt.Errorf("%w for platform wx1", ticket.ErrNoTicket)), worker.KindPause, "wxdomain ticket set wx1", 0},
		{"ticket expired", fetch(api(61005)), worker.KindPause, "ticket is expired or invalid", 0},
		{"ticket invalid", fetch(api(61006)), worker.KindPause, "ticket is expired or invalid", 0},
		{"ip whitelist", fetch(api(61004)), worker.KindPause, "whitelist", 0},
		{"token quota", fetch(api(45009)), worker.KindPause, "daily API quota", worker.ResumeNextChinaDay},
		{"daily quota", api(45009), worker.KindPause, "daily API quota", worker.ResumeNextChinaDay},
		{"minute limit", api(45011), worker.KindPause, "frequency limit", worker.ResumeNextMinute},
		{"wrong secret", fetch(api(40125)), worker.KindPause, "secret is wrong", 0},
		{"token api busy", fetch(api(-1)), worker.KindRetry, "could not issue", 0},
		{"token api transport", fetch(&wechat.TransportError{Op: "api_component_token", Err: errors.New("reset")}), worker.KindRetry, "reset", 0},
		{"unknown platform", fetch(token.ErrUnknownPlatform), worker.KindFail, "platforms file", 0},
		{"HTTP client timeout is WeChat being slow", &wechat.TransportError{Op: "modify_wxa_jump_domain", Err: fmt.Errorf("Client.Timeout exceeded: %w", context.DeadlineExceeded)}, worker.KindRetry, "could not reach WeChat", 0},
		{"canceled", context.Canceled, worker.KindCanceled, "interrupted", 0},
		{"timed out", fmt.Errorf("x: %w", context.DeadlineExceeded), worker.KindCanceled, "interrupted", 0},
		{"redis or anything else", errors.New("dial tcp: connection refused"), worker.KindRetry, "internal error", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := worker.DefaultPolicy().Classify(tt.give)
			assert.Equal(t, tt.want, got.Kind)
			assert.Contains(t, got.Reason, tt.wantText)
			assert.Equal(t, tt.wantResume, got.Resume)
		})
	}
}

func TestPolicyIsConfigurable(t *testing.T) {
	t.Parallel()
	p := worker.Policy{RetryCodes: []int{-1, 45011}, TokenCodes: []int{40001}}
	assert.Equal(t, worker.KindRetry, p.Classify(&wechat.APIError{Code: 45011}).Kind)
	assert.Equal(t, worker.KindFail, p.Classify(&wechat.APIError{Code: 42001}).Kind)
}
