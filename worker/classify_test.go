package worker_test

import (
	"context"
	"errors"
	"fmt"
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
		name     string
		give     error
		want     worker.Kind
		wantText string
	}{
		{"busy", api(-1), worker.KindRetry, "WeChat is busy (errcode -1: m)"},
		{"wrapped busy", fmt.Errorf("call: %w", api(-1)), worker.KindRetry, "busy"},
		{"not released", api(61028), worker.KindFail, "not released"},
		{"domain limit", api(65316), worker.KindFail, "limit"},
		{"invalid domains", api(9410016), worker.KindFail, "invalid domain"},
		{"invalid action", api(40052), worker.KindFail, "action"},
		{"unlisted errcode", api(12345), worker.KindFail, "errcode 12345"},
		{"invalid credential", api(40001), worker.KindRefreshToken, "token"},
		{"invalid token", api(40014), worker.KindRefreshToken, "token"},
		{"token expired", api(42001), worker.KindRefreshToken, "token"},
		{"transport", &wechat.TransportError{Op: "modify_wxa_jump_domain", StatusCode: 502, Err: errors.New("x")}, worker.KindRetry, "could not reach WeChat"},
		{"no ticket", fetch(fmt.Errorf("%w for platform wx1", token.ErrNoTicket)), worker.KindPause, "wxdomain ticket set wx1"},
		{"ticket expired", fetch(api(61005)), worker.KindPause, "ticket is expired or invalid"},
		{"ticket invalid", fetch(api(61006)), worker.KindPause, "ticket is expired or invalid"},
		{"ip whitelist", fetch(api(61004)), worker.KindPause, "whitelist"},
		{"token quota", fetch(api(45009)), worker.KindPause, "daily API quota"},
		{"wrong secret", fetch(api(40125)), worker.KindPause, "secret is wrong"},
		{"token api busy", fetch(api(-1)), worker.KindRetry, "could not issue"},
		{"token api transport", fetch(&wechat.TransportError{Op: "api_component_token", Err: errors.New("reset")}), worker.KindRetry, "reset"},
		{"unknown platform", fetch(token.ErrUnknownPlatform), worker.KindFail, "platforms file"},
		{"canceled", context.Canceled, worker.KindCanceled, "interrupted"},
		{"timed out", fmt.Errorf("x: %w", context.DeadlineExceeded), worker.KindCanceled, "interrupted"},
		{"redis or anything else", errors.New("dial tcp: connection refused"), worker.KindRetry, "internal error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := worker.DefaultPolicy().Classify(tt.give)
			assert.Equal(t, tt.want, got.Kind)
			assert.Contains(t, got.Reason, tt.wantText)
		})
	}
}

func TestPolicyIsConfigurable(t *testing.T) {
	t.Parallel()
	p := worker.Policy{RetryCodes: []int{-1, 45011}, TokenCodes: []int{40001}}
	assert.Equal(t, worker.KindRetry, p.Classify(&wechat.APIError{Code: 45011}).Kind)
	assert.Equal(t, worker.KindFail, p.Classify(&wechat.APIError{Code: 42001}).Kind)
}
