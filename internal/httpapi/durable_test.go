package httpapi_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/wxdomain/wxdomain/internal/httpapi"
	"github.com/wxdomain/wxdomain/internal/platform"
	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/tasks"
)

// TestUnconfirmedSubmissionIs503: a change or a rollout Redis replicas do
// not confirm is answered 503 with Retry-After and the reason, never 202;
// sent again with its idempotency key once the replica is back, it is the
// same change.
func TestUnconfirmedSubmissionIs503(t *testing.T) {
	t.Parallel()
	p := redistest.StartPair(t)
	known := func(a string) bool { return a == app }
	dur := tasks.Durability{MinReplicas: 1, Timeout: 100 * time.Millisecond}
	client := tasks.NewClient(p.Client, tasks.ClientConfig{Prefix: p.Prefix, Queue: p.Queue, Rules: tasks.Rules{KnownPlatform: known}, Durability: dur})
	t.Cleanup(func() { _ = client.Close() })
	srv := httptest.NewServer(httpapi.New(httpapi.Config{
		Client: client, KnownPlatform: known,
		Platforms: func(context.Context) ([]platform.Status, error) { return nil, nil },
		Ready:     func(ctx context.Context) error { return p.Client.Ping(ctx).Err() },
		Rollouts: rollout.New(p.Client, client, rollout.Config{
			Prefix: p.Prefix, Queue: p.Queue, BulkQueue: p.Queue + "_bulk", Platforms: []string{app}, Rules: tasks.Rules{KnownPlatform: known}, Durability: dur,
		}),
		Tokens: []string{token}, MaxBody: 4096, Log: zaptest.NewLogger(t),
	}))
	t.Cleanup(srv.Close)
	b := &apiBundle{srv: srv, client: client}
	body := `{"platform":"` + app + `","action":"add","domains":["a.example.com"]}`

	p.StopReplica()
	r := b.do(t, http.MethodPost, "/v1/changes", body, "Idempotency-Key", "k1")
	assert.Equal(t, http.StatusServiceUnavailable, r.status, r.body)
	assert.Equal(t, "not_confirmed", errCode(r))
	assert.Equal(t, "1", r.header.Get("Retry-After"))
	assert.Contains(t, r.body["error"].(map[string]any)["message"], "0 of 1 Redis replicas")
	rolloutBody := `{"action":"add","domains":["a.example.com"],"platforms":"all"}`
	ro := b.do(t, http.MethodPost, "/v1/rollouts", rolloutBody, "Idempotency-Key", "r1")
	assert.Equal(t, http.StatusServiceUnavailable, ro.status, ro.body)
	assert.Equal(t, "1", ro.header.Get("Retry-After"))
	assert.Contains(t, ro.body["error"].(map[string]any)["message"], "rollout")

	p.ContinueReplica()
	r = b.do(t, http.MethodPost, "/v1/changes", body, "Idempotency-Key", "k1")
	require.Equal(t, http.StatusOK, r.status, r.body) // a replay answers 200 with the first submission
	keys, err := p.Client.Keys(context.Background(), p.Prefix+"record:*").Result()
	require.NoError(t, err)
	assert.Len(t, keys, 1, "one change")

	ro = b.do(t, http.MethodPost, "/v1/rollouts", rolloutBody, "Idempotency-Key", "r1")
	require.Equal(t, http.StatusOK, ro.status, ro.body)
	assert.Equal(t, true, ro.body["replayed"])
	again := b.do(t, http.MethodPost, "/v1/rollouts", rolloutBody, "Idempotency-Key", "r1")
	assert.Equal(t, ro.body["rollout_id"], again.body["rollout_id"], "one rollout per key")
	other := b.do(t, http.MethodPost, "/v1/rollouts", `{"action":"delete","domains":["a.example.com"],"platforms":"all"}`, "Idempotency-Key", "r1")
	assert.Equal(t, http.StatusConflict, other.status, other.body)
	list := b.do(t, http.MethodGet, "/v1/rollouts", "")
	assert.Len(t, list.body["rollouts"], 1, "%v", list.body)
}
