package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/wxdomain/wxdomain/internal/httpapi"
	"github.com/wxdomain/wxdomain/internal/pause"
	"github.com/wxdomain/wxdomain/tasks"
)

// TestIDsFromOutsideAreCheckedBeforeRedis: ids in paths that are not in
// the form wxdomain generates are answered 404 (a task or rollout id) or
// 422 invalid_platform (an appid) and touch nothing, however they would
// name another key.
func TestIDsFromOutsideAreCheckedBeforeRedis(t *testing.T) {
	t.Parallel()
	b := setup(t)
	ctx := context.Background()
	r := b.do(t, http.MethodPost, "/v1/rollouts", `{"name":"n","action":"add","domains":["a.com"],"platforms":["`+app+`"]}`)
	require.Equal(t, http.StatusAccepted, r.status, r.body)
	id := r.body["rollout_id"].(string)
	stateKey := tasks.RolloutStateKey(b.redis.Prefix, id)
	before, err := b.redis.Client.HGetAll(ctx, stateKey).Result()
	require.NoError(t, err)
	keysBefore, err := b.redis.Client.Keys(ctx, "*").Result()
	require.NoError(t, err)

	for _, tt := range []struct{ method, path string }{
		{"POST", "/v1/rollouts/" + id + ":state/cancel"},
		{"POST", "/v1/rollouts/" + id + ":counts/retry"},
		{"GET", "/v1/rollouts/" + id + ":platforms:0"},
		{"GET", "/v1/rollouts/" + id + ":state/tasks"},
		{"GET", "/v1/rollouts/" + strings.ToUpper(id)},
		{"GET", "/v1/changes/" + id + ":x"},
		{"POST", "/v1/changes/r_" + id + "_0_" + app + ":x/cancel"},
		{"GET", "/v1/changes/" + strings.Repeat("a", 300)},
	} {
		r := b.do(t, tt.method, tt.path, `{"component_verify_ticket":"t"}`)
		assert.Equal(t, http.StatusNotFound, r.status, "%s %s: %v", tt.method, tt.path, r.body)
	}
	for _, tt := range []struct{ method, path string }{
		{"PUT", "/v1/platforms/_global/ticket"},
		{"POST", "/v1/platforms/_global/resume"},
		{"POST", "/v1/platforms/" + app + ":x/resume"},
	} {
		r := b.do(t, tt.method, tt.path, `{"component_verify_ticket":"t"}`)
		assert.Equal(t, http.StatusUnprocessableEntity, r.status, "%s %s: %v", tt.method, tt.path, r.body)
		assert.Equal(t, "invalid_platform", errCode(r), "%s %s", tt.method, tt.path)
	}
	after, err := b.redis.Client.HGetAll(ctx, stateKey).Result()
	require.NoError(t, err)
	assert.Equal(t, before, after, "the rollout's state is untouched")
	keysAfter, err := b.redis.Client.Keys(ctx, "*").Result()
	require.NoError(t, err)
	assert.ElementsMatch(t, keysBefore, keysAfter, "no key was written")

	// The rollout's own id still works.
	r = b.do(t, http.MethodGet, "/v1/rollouts/"+id, "")
	assert.Equal(t, http.StatusOK, r.status)
}

// TestErrorAnswersStaySmall: whatever the request holds, an error answer
// is at most 16 KiB, lists at most 20 problems and echoes at most 64 bytes
// of any value.
func TestErrorAnswersStaySmall(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *httpapi.Config) { c.MaxBody = 1 << 20 })
	quoted := func(n int, f func(i int) string) string {
		parts := make([]string, n)
		for i := range parts {
			parts[i] = `"` + f(i) + `"`
		}
		return strings.Join(parts, ",")
	}
	change := func(domains string) string {
		return `{"platform":"` + app + `","action":"set","domains":[` + domains + `]}`
	}
	tests := []struct {
		name     string
		path     string
		body     string
		wantCode string
	}{
		{"1 MB of bad domains", "/v1/changes", change(quoted(45000, func(i int) string { return fmt.Sprintf("https://d%d.com/x", i) })), "too_many_domains"},
		{"200 long bad domains", "/v1/changes", change(quoted(200, func(i int) string { return fmt.Sprintf("https://%d", i) + strings.Repeat("x", 5000) })), "invalid_domain"},
		{"300 KB domain with a scheme", "/v1/changes", change(`"` + strings.Repeat("h", 300<<10) + `://a.com"`), "invalid_domain"},
		{"control characters", "/v1/changes", change(quoted(150, func(int) string { return strings.Repeat(`\u0001`, 1000) })), "invalid_domain"},
		{"huge unknown field", "/v1/changes", `{"` + strings.Repeat("f", 900<<10) + `":1}`, "unknown_field"},
		{"50,000 bad platforms", "/v1/rollouts", `{"action":"add","domains":["a.com"],"platforms":[` + quoted(50000, func(i int) string { return fmt.Sprintf("p%d", i) }) + `]}`, "invalid_platform"},
		{"huge rollout name", "/v1/rollouts", `{"name":"` + strings.Repeat("n", 900<<10) + `","action":"add","domains":["a.com"],"platforms":["` + app + `"]}`, "invalid_name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Less(t, len(tt.body), 1<<20)
			req, err := http.NewRequest(http.MethodPost, b.srv.URL+tt.path, strings.NewReader(tt.body))
			require.NoError(t, err)
			req.Header.Set("Authorization", "Bearer "+token)
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			defer resp.Body.Close()
			raw, err := io.ReadAll(resp.Body)
			require.NoError(t, err)
			assert.LessOrEqual(t, len(raw), 16<<10, "answer of %d bytes", len(raw))
			t.Logf("%d-byte request, %d-byte answer", len(tt.body), len(raw))
			var body struct {
				Error struct {
					Code    string          `json:"code"`
					Message string          `json:"message"`
					Details []tasks.Problem `json:"details"`
				} `json:"error"`
			}
			require.NoError(t, json.Unmarshal(raw, &body))
			assert.Equal(t, tt.wantCode, body.Error.Code)
			assert.LessOrEqual(t, len(body.Error.Details), tasks.MaxProblems)
			for _, p := range body.Error.Details {
				assert.LessOrEqual(t, len(p.Value), 64+len("…"))
			}
			for _, x := range []string{"x", "h", "f", "n", `\u0001`} {
				assert.NotContains(t, string(raw), strings.Repeat(x, 65), "no value is echoed beyond 64 bytes")
			}
			assert.LessOrEqual(t, len(body.Error.Message), 2<<10+len("… (cut short)"))
		})
	}

	r := b.do(t, http.MethodPost, "/v1/changes", change(quoted(200, func(i int) string { return fmt.Sprintf("bad_%d", i) })))
	require.Equal(t, http.StatusUnprocessableEntity, r.status)
	assert.Contains(t, r.body["error"].(map[string]any)["message"], "and 180 more")
	assert.Len(t, r.body["error"].(map[string]any)["details"], 20)
}

// TestWaitOfZeroIsARead: ?wait=0s (or less, or 1ns) answers like a plain
// read, never 500.
func TestWaitOfZeroIsARead(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.do(t, http.MethodPost, "/v1/changes", `{"platform":"`+app+`","action":"get"}`)
	require.Equal(t, http.StatusAccepted, r.status)
	id := r.body["task_id"].(string)
	for _, wait := range []string{"0s", "1ns", "-5s", "0"} {
		r := b.do(t, http.MethodGet, "/v1/changes/"+id+"?wait="+wait, "")
		assert.Equal(t, http.StatusOK, r.status, wait)
		assert.Equal(t, "queued", r.body["status"], wait)
		r = b.do(t, http.MethodGet, "/v1/changes/0123456789abcdef0123456789abcdef?wait="+wait, "")
		assert.Equal(t, http.StatusNotFound, r.status, "unknown id, wait %s", wait)
	}
}

// TestResumeEndsAnyPause: the operator's resume ends a pause a ticket
// does not, runs nothing twice, and is logged once with who asked.
func TestResumeEndsAnyPause(t *testing.T) {
	t.Parallel()
	obs, logs := observer.New(zapcore.InfoLevel)
	b := setup(t, func(c *httpapi.Config) { c.Log = zap.New(obs) })
	ctx := context.Background()
	pauses := pause.NewStore(b.redis.Client, b.redis.Prefix)
	until := time.Now().Add(time.Hour)
	_, err := pauses.Set(ctx, app, pause.Pause{Kind: pause.KindDailyQuota, ErrCode: 45009, Reason: "quota", Until: until})
	require.NoError(t, err)

	r := b.do(t, http.MethodPut, "/v1/platforms/"+app+"/ticket", `{"component_verify_ticket":"fresh"}`)
	require.Equal(t, http.StatusOK, r.status, r.body)
	assert.Equal(t, true, r.body["stored"])
	assert.Equal(t, "daily_quota", r.body["kept_pause"].(map[string]any)["kind"], "a ticket does not end a quota pause")
	r = b.do(t, http.MethodGet, "/v1/platforms", "")
	require.Equal(t, http.StatusOK, r.status)

	r = b.do(t, http.MethodPost, "/v1/platforms/"+app+"/resume", "")
	require.Equal(t, http.StatusOK, r.status, r.body)
	ended := r.body["ended_pause"].(map[string]any)
	assert.Equal(t, "daily_quota", ended["kind"])
	assert.Equal(t, "quota", ended["reason"])
	_, paused, err := pauses.Get(ctx, app)
	require.NoError(t, err)
	assert.False(t, paused)
	lines := logs.FilterMessage("platform resumed by an operator").All()
	require.Len(t, lines, 1)
	assert.Equal(t, "api token 2", lines[0].ContextMap()["requested_by"])
	assert.Equal(t, "daily_quota", lines[0].ContextMap()["pause_kind"])

	r = b.do(t, http.MethodPost, "/v1/platforms/"+app+"/resume", "")
	require.Equal(t, http.StatusOK, r.status)
	assert.Nil(t, r.body["ended_pause"], "not paused any more")
	r = b.do(t, http.MethodPost, "/v1/platforms/wx0000000000000000/resume", "")
	assert.Equal(t, http.StatusUnprocessableEntity, r.status)
	assert.Equal(t, "unknown_platform", errCode(r))
}

// TestTicketWithATime: a ticket given with its CreateTime replaces only an
// older one; a time in the future is refused.
func TestTicketWithATime(t *testing.T) {
	t.Parallel()
	b := setup(t)
	now := time.Now().Unix()
	put := func(body string) response {
		return b.do(t, http.MethodPut, "/v1/platforms/"+app+"/ticket", body)
	}
	r := put(fmt.Sprintf(`{"component_verify_ticket":"t2","create_time":%d}`, now-60))
	require.Equal(t, http.StatusOK, r.status, r.body)
	assert.Equal(t, true, r.body["stored"])
	r = put(fmt.Sprintf(`{"component_verify_ticket":"t1","create_time":%d}`, now-600))
	require.Equal(t, http.StatusOK, r.status, r.body)
	assert.Equal(t, false, r.body["stored"], "older than the stored ticket: nothing changes")
	r = put(fmt.Sprintf(`{"component_verify_ticket":"t9","create_time":%d}`, now*1000))
	assert.Equal(t, http.StatusUnprocessableEntity, r.status, "milliseconds, far in the future, would lock out every later push")
	assert.Equal(t, "invalid_create_time", errCode(r))
	v, err := b.redis.Client.HGet(context.Background(), b.redis.Prefix+"ticket:"+app, "ticket").Result()
	require.NoError(t, err)
	assert.Equal(t, "t2", v)
	r = put(`{"component_verify_ticket":"t0"}`)
	require.Equal(t, http.StatusOK, r.status)
	assert.Equal(t, true, r.body["stored"], "without a time, the operator's ticket replaces any")
}
