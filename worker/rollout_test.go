package worker_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/internal/wechattest"
	"github.com/wxdomain/wxdomain/tasks"
)

func manyPlatforms(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("wxa%015x", i)
	}
	return out
}

// setupRollouts runs workers that also fan rollouts out.
func setupRollouts(t testing.TB, platforms []string, o setupOpts) (*testBundle, *rollout.Service) {
	t.Helper()
	o.platforms, o.noWorker = platforms, true
	b := setup(t, redistest.Real, o)
	svc := rollout.New(b.redis.Client, b.client, rollout.Config{
		Prefix: b.redis.Prefix, Queue: b.redis.Queue, BulkQueue: b.redis.Queue + "_bulk", Platforms: platforms, BatchSize: 50,
		Rules: tasks.Rules{KnownPlatform: func(a string) bool { _, ok := b.secrets(a); return ok }},
	})
	t.Cleanup(func() { _ = svc.Close() })
	b.opts.handlers = map[string]asynq.Handler{rollout.TypeFanout: svc}
	for i := 0; i < max(o.workers, 1); i++ {
		b.startWorker(t)
	}
	return b, svc
}

func waitRollout(t testing.TB, svc *rollout.Service, id string) *rollout.Rollout {
	t.Helper()
	var r *rollout.Rollout
	require.Eventually(t, func() bool {
		var err error
		r, err = svc.Get(context.Background(), id)
		return err == nil && r.FinishedAt != nil
	}, 90*time.Second, 50*time.Millisecond)
	return r
}

func callsOf(sb *wechattest.Sandbox, appid, action string) int {
	n := 0
	for _, c := range sb.Calls() {
		if c.API == "modify_wxa_jump_domain" && c.AppID == appid && c.Action == action {
			n++
		}
	}
	return n
}

func TestRolloutCountsMatchWhatTheSandboxDid(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	platforms := manyPlatforms(200)
	b, svc := setupRollouts(t, platforms, setupOpts{workers: 2, concurrency: 10, maxAttempts: 12})
	wantFailed := map[string]bool{}
	for i, app := range platforms {
		switch {
		case i%5 == 0: // never released: publishing fails with 61028
			b.sandbox.PutPlatform(wechattest.Platform{AppID: app, Secret: "secret-" + app})
			wantFailed[app] = true
		case i%7 == 0: // at the domain limit: 65316
			full := make([]string, wechattest.DefaultMaxDomains)
			for j := range full {
				full[j] = fmt.Sprintf("f%d.example.com", j)
			}
			b.sandbox.PutPlatform(wechattest.Platform{AppID: app, Secret: "secret-" + app, Released: true, Testing: full, Published: full})
			wantFailed[app] = true
		case i%3 == 0: // busy half the time: retried until it succeeds
			b.sandbox.SetFaults(app, wechattest.Faults{BusyRate: 0.5})
		}
	}
	r, err := svc.Create(ctx, rollout.Spec{Name: "add shop", Action: tasks.ActionAdd, Domains: []string{"shop.example.com"}, Publish: true, All: true})
	require.NoError(t, err)
	assert.Equal(t, 200, r.Total)
	r = waitRollout(t, svc, r.ID)

	assert.Equal(t, rollout.StatusDone, r.Status)
	assert.Equal(t, rollout.Counts{Succeeded: 200 - len(wantFailed), Failed: len(wantFailed)}, r.Counts, "exact counts despite retries")
	// The sandbox agrees platform by platform.
	for _, app := range platforms {
		p, _ := b.sandbox.Platform(app)
		assert.Equal(t, !wantFailed[app], containsDomain(p.Testing, "shop.example.com"), app)
	}
	failed, cursor, err := svc.Tasks(ctx, r.ID, tasks.StatusFailed, "", 1000)
	require.NoError(t, err)
	assert.Empty(t, cursor)
	assert.Len(t, failed, len(wantFailed))
	for _, o := range failed {
		assert.True(t, wantFailed[o.Platform], o.Platform)
		require.NotNil(t, o.ErrCode)
		assert.Contains(t, []int{61028, 65316}, *o.ErrCode)
		assert.NotEmpty(t, o.Error)
	}

	// Retry touches only the failed ones: release the unreleased platforms.
	before := map[string]int{}
	for _, app := range platforms {
		before[app] = callsOf(b.sandbox, app, "add")
		if wantFailed[app] {
			p, _ := b.sandbox.Platform(app)
			if !p.Released {
				p.Released = true
				b.sandbox.PutPlatform(p)
			}
		}
	}
	r, err = svc.Retry(ctx, r.ID)
	require.NoError(t, err)
	assert.Equal(t, 1, r.Attempt)
	r = waitRollout(t, svc, r.ID)
	atLimit := 0
	for i, app := range platforms {
		if wantFailed[app] {
			assert.Greater(t, callsOf(b.sandbox, app, "add"), before[app], "%s retried", app)
			if i%5 != 0 {
				atLimit++
			}
		} else {
			assert.Equal(t, before[app], callsOf(b.sandbox, app, "add"), "%s not touched again", app)
		}
	}
	assert.Equal(t, rollout.Counts{Succeeded: 200 - atLimit, Failed: atLimit}, r.Counts)
}

func containsDomain(list []string, d string) bool {
	for _, x := range list {
		if x == d {
			return true
		}
	}
	return false
}

func TestRolloutCancelLeavesNothingRunningLater(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	platforms := manyPlatforms(100)
	b, svc := setupRollouts(t, platforms, setupOpts{workers: 1, concurrency: 4})
	b.sandbox.SetLatency(100 * time.Millisecond)
	r, err := svc.Create(ctx, rollout.Spec{Name: "slow", Action: tasks.ActionAdd, Domains: []string{"a.example.com"}, All: true})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		got, err := svc.Get(ctx, r.ID)
		return err == nil && got.Counts.Succeeded >= 8
	}, 30*time.Second, 20*time.Millisecond)
	r, err = svc.Cancel(ctx, r.ID)
	require.NoError(t, err)
	assert.Equal(t, rollout.StatusCanceled, r.Status)
	r = waitRollout(t, svc, r.ID)
	calls := len(b.sandbox.Calls())
	time.Sleep(1500 * time.Millisecond)
	assert.Equal(t, calls, len(b.sandbox.Calls()), "no call after the running changes finished")
	assert.Equal(t, 100, r.Counts.Succeeded+r.Counts.Canceled, "%+v", r.Counts)
	assert.Greater(t, r.Counts.Canceled, 50)
	assert.Zero(t, r.Counts.Queued+r.Counts.Running+r.Counts.Retrying)
}

func TestRolloutEnsureCallsNothingWhereNothingIsToDo(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	platforms := manyPlatforms(20)
	b, svc := setupRollouts(t, platforms, setupOpts{workers: 1, concurrency: 4})
	for i, app := range platforms {
		if i%2 == 0 {
			b.sandbox.PutPlatform(wechattest.Platform{AppID: app, Secret: "secret-" + app, Released: true, Testing: []string{"x.example.com"}})
		}
	}
	dry, err := svc.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"x.example.com"}, Platforms: platforms, Ensure: true, DryRun: true})
	require.NoError(t, err)
	assert.Len(t, dry.Plan, 20)
	assert.Empty(t, b.sandbox.Calls(), "a dry run calls nothing")

	r, err := svc.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"x.example.com"}, Platforms: platforms, Ensure: true})
	require.NoError(t, err)
	r = waitRollout(t, svc, r.ID)
	assert.Equal(t, 20, r.Counts.Succeeded)
	for i, app := range platforms {
		assert.Equal(t, 1, callsOf(b.sandbox, app, "get"), app)
		assert.Equal(t, map[bool]int{true: 0, false: 1}[i%2 == 0], callsOf(b.sandbox, app, "add"), app)
	}
	done, _, err := svc.Tasks(ctx, r.ID, tasks.StatusSucceeded, "", 100)
	require.NoError(t, err)
	notes := 0
	for _, o := range done {
		if o.Note != "" {
			notes++
		}
	}
	assert.Equal(t, 10, notes, "the skipped ones say so")
}

// TestFanoutFailsAPlatformItCannotQueue: a platform the fan-out cannot
// queue (gone from the platforms file) fails alone, with the reason, and
// the rollout finishes instead of fanning out for ever; a retry does the
// same again.
func TestFanoutFailsAPlatformItCannotQueue(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	platforms := manyPlatforms(6)
	b := setup(t, redistest.Real, setupOpts{platforms: platforms, noWorker: true})
	gone := platforms[3]
	// The API's service still knows the platform; the workers' does not.
	api := rollout.New(b.redis.Client, b.client, rollout.Config{
		Prefix: b.redis.Prefix, Queue: b.redis.Queue, BulkQueue: b.redis.Queue + "_bulk", Platforms: platforms,
	})
	t.Cleanup(func() { _ = api.Close() })
	client := tasks.NewClient(b.redis.Client, tasks.ClientConfig{Prefix: b.redis.Prefix, Queue: b.redis.Queue,
		Rules: tasks.Rules{KnownPlatform: func(a string) bool { return a != gone }}})
	t.Cleanup(func() { _ = client.Close() })
	workers := rollout.New(b.redis.Client, client, rollout.Config{
		Prefix: b.redis.Prefix, Queue: b.redis.Queue, BulkQueue: b.redis.Queue + "_bulk", Platforms: platforms,
	})
	t.Cleanup(func() { _ = workers.Close() })
	b.opts.handlers = map[string]asynq.Handler{rollout.TypeFanout: workers}
	b.startWorker(t)

	r, err := api.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"a.com"}, Platforms: platforms})
	require.NoError(t, err)
	r = waitRollout(t, api, r.ID)
	assert.Equal(t, rollout.Counts{Succeeded: 5, Failed: 1}, r.Counts)
	failed, _, err := api.Tasks(ctx, r.ID, tasks.StatusFailed, "", 100)
	require.NoError(t, err)
	require.Len(t, failed, 1)
	assert.Equal(t, gone, failed[0].Platform)
	assert.Contains(t, failed[0].Error, "could not be queued")
	assert.Contains(t, failed[0].Error, "not in the platforms file")

	_, err = api.Retry(ctx, r.ID)
	require.NoError(t, err)
	r = waitRollout(t, api, r.ID)
	assert.Equal(t, rollout.Counts{Succeeded: 5, Failed: 1}, r.Counts)
	assert.Equal(t, 1, r.Attempt)
	info, err := asynq.NewInspectorFromRedisClient(b.redis.Client).GetQueueInfo(b.redis.Queue)
	require.NoError(t, err)
	assert.Zero(t, info.Retry+info.Pending+info.Active, "no fan-out left retrying")
}

// TestFanoutThatCannotFinishFailsTheRollout: when Redis keeps refusing the
// fan-out's writes, it gives up after its bounded retries and the rollout
// fails with the reason; every platform is counted.
func TestFanoutThatCannotFinishFailsTheRollout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	platforms := manyPlatforms(4)
	b := setup(t, redistest.Real, setupOpts{platforms: platforms, noWorker: true})
	svc := rollout.New(b.redis.Client, b.client, rollout.Config{
		Prefix: b.redis.Prefix, Queue: b.redis.Queue, BulkQueue: b.redis.Queue + "_bulk", Platforms: platforms,
	})
	t.Cleanup(func() { _ = svc.Close() })
	b.opts.handlers = map[string]asynq.Handler{rollout.TypeFanout: svc}
	r, err := svc.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"a.com"}, Platforms: platforms})
	require.NoError(t, err)
	// Redis refuses every task queued on the bulk queue: every try fails.
	b.redis.Client.AddHook(refuseEnqueue{prefix: "asynq:{" + b.redis.Queue + "_bulk}:t:"})
	b.startWorker(t)
	r = waitRollout(t, svc, r.ID)
	assert.Equal(t, rollout.StatusFailed, r.Status)
	assert.Contains(t, r.Error, "the fan-out gave up after 11 tries")
	assert.Contains(t, r.Error, "OOM command not allowed")
	assert.Equal(t, rollout.Counts{Failed: 4}, r.Counts)
	failed, _, err := svc.Tasks(ctx, r.ID, tasks.StatusFailed, "", 100)
	require.NoError(t, err)
	require.Len(t, failed, 4)
	assert.Contains(t, failed[0].Error, "gave up")
	assert.Zero(t, modifyCalls(b.sandbox))
}

// refuseEnqueue fails asynq's enqueue of tasks whose key has a prefix, as
// a Redis out of memory would.
type refuseEnqueue struct{ prefix string }

func (refuseEnqueue) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h refuseEnqueue) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		args := cmd.Args()
		if n := strings.ToLower(cmd.Name()); (n == "evalsha" || n == "eval") && len(args) > 3 && strings.HasPrefix(fmt.Sprint(args[3]), h.prefix) {
			err := errors.New("OOM command not allowed when used memory > 'maxmemory'")
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}
func (refuseEnqueue) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// TestFinishedRolloutsExpire: a finished rollout's keys expire after the
// rollout TTL, and the index keeps no dead id; a retry keeps it alive.
func TestFinishedRolloutsExpire(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	platforms := manyPlatforms(3)
	b := setup(t, redistest.Real, setupOpts{platforms: platforms, noWorker: true})
	svc := rollout.New(b.redis.Client, b.client, rollout.Config{
		Prefix: b.redis.Prefix, Queue: b.redis.Queue, BulkQueue: b.redis.Queue + "_bulk", Platforms: platforms, TTL: 2 * time.Second,
		Rules: tasks.Rules{KnownPlatform: func(a string) bool { _, ok := b.secrets(a); return ok }},
	})
	t.Cleanup(func() { _ = svc.Close() })
	b.opts.handlers = map[string]asynq.Handler{rollout.TypeFanout: svc}
	b.startWorker(t)
	b.sandbox.PutPlatform(wechattest.Platform{AppID: platforms[0], Secret: "secret-" + platforms[0]}) // not released: fails

	r, err := svc.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"a.com"}, Publish: true, Platforms: platforms})
	require.NoError(t, err)
	r = waitRollout(t, svc, r.ID)
	require.Equal(t, 1, r.Counts.Failed)
	keys := tasks.RolloutKeys(b.redis.Prefix, r.ID, 0)
	for _, k := range keys {
		ttl, err := b.redis.Client.PTTL(ctx, k).Result()
		require.NoError(t, err)
		if ttl == -2 && (k == tasks.RolloutOwnerKey(b.redis.Prefix, r.ID) || k == tasks.RolloutPreflightKey(b.redis.Prefix, r.ID)) {
			continue // made by the first retry, or by the first preflight failure
		}
		assert.True(t, ttl > 0 && ttl <= 2*time.Second, "%s expires (ttl %s)", k, ttl)
	}
	// A retry: running again, nothing expires.
	_, err = svc.Retry(ctx, r.ID)
	require.NoError(t, err)
	for _, k := range keys[:3] {
		ttl, err := b.redis.Client.PTTL(ctx, k).Result()
		require.NoError(t, err)
		assert.Equal(t, time.Duration(-1), ttl, "%s persists while the rollout runs", k)
	}
	r = waitRollout(t, svc, r.ID)
	require.NotNil(t, r.FinishedAt)
	time.Sleep(2500 * time.Millisecond)
	for _, k := range tasks.RolloutKeys(b.redis.Prefix, r.ID, 1) {
		n, err := b.redis.Client.Exists(ctx, k).Result()
		require.NoError(t, err)
		assert.Zero(t, n, "%s is gone", k)
	}
	_, err = svc.Get(ctx, r.ID)
	assert.ErrorIs(t, err, rollout.ErrNotFound)
	list, err := svc.List(ctx, 50)
	require.NoError(t, err)
	assert.Empty(t, list)
	n, err := b.redis.Client.ZCard(ctx, b.redis.Prefix+"rollouts").Result()
	require.NoError(t, err)
	assert.Zero(t, n, "the index keeps no dead id")
}

// TestMalformedRolloutChangeFailsItsPlatform: a rollout change whose
// payload the worker refuses still moves its platform to failed, so the
// rollout finishes (and later expires) instead of waiting for ever.
func TestMalformedRolloutChangeFailsItsPlatform(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	platforms := manyPlatforms(1)
	b := setup(t, redistest.Real, setupOpts{platforms: platforms, noWorker: true})
	svc := rollout.New(b.redis.Client, b.client, rollout.Config{
		Prefix: b.redis.Prefix, Queue: b.redis.Queue, BulkQueue: b.redis.Queue + "_bulk", Platforms: platforms,
	})
	t.Cleanup(func() { _ = svc.Close() })
	r, err := svc.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"a.com"}, Platforms: platforms})
	require.NoError(t, err)
	inspector := asynq.NewInspectorFromRedisClient(b.redis.Client)
	t.Cleanup(func() { _ = inspector.Close() })
	require.NoError(t, inspector.DeleteTask(b.redis.Queue, "fanout_"+r.ID+"_0"))
	// What a producer with other limits could have queued for the platform.
	payload := `{"platform":"` + platforms[0] + `","action":"add","domains":["a.com;evil.com"],"rollout_id":"` + r.ID + `"}`
	producer := asynq.NewClientFromRedisClient(b.redis.Client)
	t.Cleanup(func() { _ = producer.Close() })
	_, err = producer.Enqueue(asynq.NewTask(tasks.TypeJumpDomain, []byte(payload)), asynq.Queue(b.redis.Queue+"_bulk"), asynq.TaskID(rollout.TaskID(r.ID, 0, platforms[0])))
	require.NoError(t, err)
	b.opts.handlers = map[string]asynq.Handler{rollout.TypeFanout: svc}
	b.startWorker(t)

	r = waitRollout(t, svc, r.ID)
	assert.Equal(t, rollout.Counts{Failed: 1}, r.Counts)
	failed, _, err := svc.Tasks(ctx, r.ID, tasks.StatusFailed, "", 10)
	require.NoError(t, err)
	require.Len(t, failed, 1)
	assert.Contains(t, failed[0].Error, "not a valid change")
	assert.Zero(t, modifyCalls(b.sandbox))
}
