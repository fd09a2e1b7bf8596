package worker_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/limit"
	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/internal/token"
	"github.com/wxdomain/wxdomain/internal/wechat"
	"github.com/wxdomain/wxdomain/internal/wechattest"
	"github.com/wxdomain/wxdomain/tasks"
	"github.com/wxdomain/wxdomain/worker"
)

// listsFetcher is another process's lists fetcher (an API server's or the
// CLI's): its own token source and limiter over the fleet's Redis.
func (b *testBundle) listsFetcher(t testing.TB, maxWait time.Duration) func(context.Context, string) (wechat.JumpDomains, error) {
	t.Helper()
	tokens := token.NewSource(b.redis.Client, b.wc, b.tickets, token.SourceConfig{Prefix: b.redis.Prefix, Margin: time.Minute, Secret: b.secrets}, b.log)
	limiter := limit.New(b.redis.Client, b.redis.Prefix, b.opts.global, limit.Pacing{})
	rate := func(appid string) limit.Rate { return b.opts.rates[appid] }
	return worker.ListsFetcher(tokens, b.wc, limiter, rate, worker.DefaultPolicy(), maxWait)
}

// TestListsFetcher: a get with the fleet's token; a refused token is
// dropped and the get made once more; a slot too far off is a SlotError,
// and no call.
func TestListsFetcher(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, redistest.Real, setupOpts{noWorker: true, rates: map[string]limit.Rate{appB: {PerSecond: 0.1, Burst: 1}}})
	b.sandbox.PutPlatform(wechattest.Platform{AppID: appA, Secret: "secret-" + appA, Released: true, Testing: []string{"a.example.com", "b.example.com"}, Published: []string{"a.example.com"}})
	fetch := b.listsFetcher(t, time.Second)

	l, err := fetch(ctx, appA)
	require.NoError(t, err)
	assert.Equal(t, []string{"a.example.com", "b.example.com"}, l.Testing)
	assert.Equal(t, []string{"a.example.com"}, l.Published)

	b.sandbox.SetFaults(appA, wechattest.Faults{Script: []int{40001}})
	fetches := b.sandbox.TokenFetches(appA)
	testing, published, err := worker.ListsOf(fetch)(ctx, appA)
	require.NoError(t, err)
	assert.Equal(t, []string{"a.example.com", "b.example.com"}, testing)
	assert.Equal(t, []string{"a.example.com"}, published)
	assert.Equal(t, fetches+1, b.sandbox.TokenFetches(appA), "the refused token was replaced")
	assert.Equal(t, 3, callsOf(b.sandbox, appA, "get"))
	assert.Zero(t, modifyCalls(b.sandbox)-3, "nothing but gets")

	b.sandbox.SetFaults(appA, wechattest.Faults{Script: []int{-1}})
	_, err = fetch(ctx, appA)
	var apiErr *wechat.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, -1, apiErr.Code)

	// appB: one call per 10s; the second is not waited for.
	_, err = fetch(ctx, appB)
	require.NoError(t, err)
	_, err = fetch(ctx, appB)
	var se *worker.SlotError
	require.True(t, errors.As(err, &se), "%v", err)
	assert.Equal(t, 1, callsOf(b.sandbox, appB, "get"))
}

// TestEnsureDryRunReadsTheLists: an ensure dry run reads each platform's
// lists with one get and shows the difference: nothing to do, the exact
// call, the limit it would break; nothing is changed.
func TestEnsureDryRunReadsTheLists(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	full := "wxf00000000000000f"
	b := setup(t, redistest.Real, setupOpts{noWorker: true, platforms: []string{full}})
	b.sandbox.PutPlatform(wechattest.Platform{AppID: appA, Secret: "secret-" + appA, Released: true, Testing: []string{"shop.example.com"}, Published: []string{"shop.example.com"}})
	b.sandbox.PutPlatform(wechattest.Platform{AppID: appB, Secret: "secret-" + appB, Released: true, Testing: []string{"shop.example.com", "new.example.com"}, Published: []string{"shop.example.com", "new.example.com"}})
	many := make([]string, 199)
	for i := range many {
		many[i] = fmt.Sprintf("f%d.example.com", i)
	}
	b.sandbox.PutPlatform(wechattest.Platform{AppID: full, Secret: "secret-" + full, Released: true, Testing: many, Published: many})
	all := []string{appA, appB, full}
	svc := rollout.New(b.redis.Client, b.client, rollout.Config{
		Prefix: b.redis.Prefix, Queue: b.redis.Queue, BulkQueue: b.redis.Queue + "_bulk", Platforms: all,
		Lists: worker.ListsOf(b.listsFetcher(t, time.Second)),
	})
	t.Cleanup(func() { _ = svc.Close() })

	r, err := svc.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"shop.example.com", "new.example.com"}, Publish: true, All: true, Ensure: true, DryRun: true})
	require.NoError(t, err)
	require.NotNil(t, r.EnsurePlan)
	assert.Equal(t, []string{
		"ensure dry run: read the current lists of 3 platforms with one get call each (read-only, on their rate limits)",
		"platforms: 1 would call, 1 nothing to do, 1 would fail, 0 lists not read",
		appA + ": would call add new.example.com (testing and published)",
		appB + ": nothing to do (already in the desired state)",
		full + ": would fail: adding 2 domains would make 201, over the limit of 200",
	}, r.EnsurePlan.Lines())
	assert.Equal(t, []tasks.JumpDomainChange{{Platform: appA, Action: tasks.ActionAdd, Domains: []string{"new.example.com"}, Publish: true}}, r.Plan)
	for _, app := range all {
		assert.Equal(t, 1, callsOf(b.sandbox, app, "get"), app)
	}
	assert.Equal(t, 3, modifyCalls(b.sandbox), "gets only")
	p, _ := b.sandbox.Platform(appA)
	assert.Equal(t, []string{"shop.example.com"}, p.Testing, "nothing changed")
}
