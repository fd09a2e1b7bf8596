package worker_test

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/preflight/preflighttest"
	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/internal/wechattest"
	"github.com/wxdomain/wxdomain/tasks"
)

const filesDomain = "files.example.com"

// servedRollout sets up 20 sandbox platforms that check files, the file
// served on filesDomain for the first 15 only, and runs a rollout adding
// filesDomain in mode.
func servedRollout(t *testing.T, mode tasks.PreflightMode) (*testBundle, *rollout.Rollout, []string) {
	t.Helper()
	files := preflighttest.NewServer(t)
	platforms := manyPlatforms(20)
	b, svc := setupRollouts(t, platforms, setupOpts{files: files, preflightMode: tasks.PreflightWarn, concurrency: 8})
	for _, p := range platforms[:15] {
		name, content := b.sandbox.ConfirmFile(p)
		files.ServeFile(filesDomain, name, content)
	}
	r, err := svc.Create(context.Background(), rollout.Spec{Action: tasks.ActionAdd, Domains: []string{filesDomain}, Platforms: platforms, Preflight: mode})
	require.NoError(t, err)
	return b, waitRollout(t, svc, r.ID), platforms
}

// Enforce: the five platforms whose domain lacks the file fail without a
// call; the fifteen others are changed, in one run.
func TestPreflightEnforceRolloutSendsOnlyWhatPasses(t *testing.T) {
	t.Parallel()
	b, r, platforms := servedRollout(t, tasks.PreflightEnforce)
	assert.Equal(t, rollout.StatusDone, r.Status)
	assert.Equal(t, 15, r.Counts.Succeeded)
	assert.Equal(t, 5, r.Counts.Failed)
	assert.Equal(t, 5, r.Counts.PreflightFailed)
	assert.Equal(t, tasks.PreflightEnforce, r.Preflight)
	for i, p := range platforms {
		rec, err := b.client.Get(context.Background(), rollout.TaskID(r.ID, 0, p))
		require.NoError(t, err)
		if i < 15 {
			assert.Equal(t, tasks.StatusSucceeded, rec.Status, p)
			assert.Equal(t, 1, callsOf(b.sandbox, p, "add"), p)
			assert.Equal(t, map[string]string{filesDomain: "ok"}, rec.Preflight)
			sp, _ := b.sandbox.Platform(p)
			assert.Contains(t, sp.Testing, filesDomain)
			continue
		}
		assert.Equal(t, tasks.StatusFailed, rec.Status, p)
		assert.Contains(t, rec.Error, "verification file missing")
		assert.Contains(t, rec.Preflight[filesDomain], "verification file missing: HTTP 404 at https://files.example.com/")
		assert.Zero(t, callsOf(b.sandbox, p, "add"), "%s: no call for a change that cannot pass", p)
		assert.Zero(t, rec.Attempts)
	}
}

// Warn: every platform is called; WeChat (the sandbox, checking files)
// refuses the domain on five, whose records carry the finding too.
func TestPreflightWarnRolloutCallsAndRecordsTheFindings(t *testing.T) {
	t.Parallel()
	b, r, platforms := servedRollout(t, tasks.PreflightWarn)
	assert.Equal(t, 15, r.Counts.Succeeded)
	assert.Equal(t, 5, r.Counts.Partial)
	assert.Equal(t, 5, r.Counts.PreflightFailed)
	calls := 0
	for i, p := range platforms {
		calls += callsOf(b.sandbox, p, "add")
		rec, err := b.client.Get(context.Background(), rollout.TaskID(r.ID, 0, p))
		require.NoError(t, err)
		if i < 15 {
			assert.Equal(t, tasks.StatusSucceeded, rec.Status)
			assert.Empty(t, rec.InvalidDomains)
			continue
		}
		assert.Equal(t, tasks.StatusPartial, rec.Status, p)
		assert.Equal(t, []string{filesDomain}, rec.InvalidDomains, p)
		assert.True(t, strings.HasPrefix(rec.Preflight[filesDomain], tasks.PreflightMissing), rec.Preflight[filesDomain])
	}
	assert.Equal(t, 20, calls)
	// The set of those platforms expires with the finished rollout.
	ttl, err := b.redis.Client.PTTL(context.Background(), tasks.RolloutPreflightKey(b.redis.Prefix, r.ID)).Result()
	require.NoError(t, err)
	assert.Greater(t, ttl, time.Duration(0))

	// The failures list the platforms called anyway, with the reasons.
	svc := rollout.New(b.redis.Client, b.client, rollout.Config{Prefix: b.redis.Prefix})
	pre, err := svc.PreflightFailures(context.Background(), r.ID)
	require.NoError(t, err)
	require.Len(t, pre, 5)
	for _, o := range pre {
		assert.Equal(t, tasks.StatusPartial, o.Status)
		assert.Contains(t, o.Preflight[filesDomain], "HTTP 404")
	}
}

// A second change within five minutes does not fetch the domain again:
// the fleet shares the result.
func TestPreflightResultIsCachedAcrossChanges(t *testing.T) {
	t.Parallel()
	files := preflighttest.NewServer(t)
	b := setup(t, redistest.Real, setupOpts{files: files, preflightMode: tasks.PreflightEnforce, workers: 2})
	name, content := b.sandbox.ConfirmFile(appA)
	files.ServeFile("shop.example.com", name, content)

	rec := b.enqueueWait(t, tasks.JumpDomainChange{Platform: appA, Action: tasks.ActionAdd, Domains: []string{"shop.example.com"}})
	require.Equal(t, tasks.StatusSucceeded, rec.Status, rec.Error)
	rec = b.enqueueWait(t, tasks.JumpDomainChange{Platform: appA, Action: tasks.ActionSet, Domains: []string{"shop.example.com"}})
	require.Equal(t, tasks.StatusSucceeded, rec.Status, rec.Error)
	assert.Equal(t, 1, files.CheckerHits("shop.example.com"), "the second change used the cached result")
	assert.Equal(t, 1, b.sandbox.Stats().Calls["get_domain_confirmfile 0"], "the file is asked of WeChat once")
}

// Enforce leaves a failing domain out of an add (the record is partial),
// and refuses a plain set with one (it would remove it).
func TestPreflightEnforceOnAPlainChange(t *testing.T) {
	t.Parallel()
	files := preflighttest.NewServer(t)
	b := setup(t, redistest.Real, setupOpts{files: files, preflightMode: tasks.PreflightEnforce})
	name, content := b.sandbox.ConfirmFile(appA)
	files.ServeFile("good.example.com", name, content)

	rec := b.enqueueWait(t, tasks.JumpDomainChange{Platform: appA, Action: tasks.ActionAdd, Domains: []string{"good.example.com", "bad.example.com"}})
	assert.Equal(t, tasks.StatusPartial, rec.Status)
	assert.Contains(t, rec.Error, "1 of 2 domains were not sent")
	assert.Equal(t, "ok", rec.Preflight["good.example.com"])
	assert.Contains(t, rec.Preflight["bad.example.com"], "HTTP 404")
	calls := b.sandbox.Calls()
	var adds []string
	for _, c := range calls {
		if c.API == "modify_wxa_jump_domain" {
			adds = append(adds, c.Action+" "+c.Domains)
		}
	}
	assert.Equal(t, []string{"add good.example.com"}, adds)

	rec = b.enqueueWait(t, tasks.JumpDomainChange{Platform: appA, Action: tasks.ActionSet, Domains: []string{"good.example.com", "bad.example.com"}})
	assert.Equal(t, tasks.StatusFailed, rec.Status)
	assert.Contains(t, rec.Error, "a set without them would remove them")
	assert.Zero(t, callsOf(b.sandbox, appA, "set"))

	// The change's own mode wins over the workers' default.
	rec = b.enqueueWait(t, tasks.JumpDomainChange{Platform: appA, Action: tasks.ActionAdd, Domains: []string{"bad.example.com"}, Preflight: tasks.PreflightOff})
	assert.Equal(t, tasks.StatusPartial, rec.Status, "the sandbox refused it, as WeChat would")
	assert.Nil(t, rec.Preflight)
}

// An ensure change checks only the domains it would add, after its get.
func TestPreflightEnsureChecksOnlyWhatItWouldAdd(t *testing.T) {
	t.Parallel()
	files := preflighttest.NewServer(t)
	b := setup(t, redistest.Real, setupOpts{files: files, preflightMode: tasks.PreflightEnforce})
	name, content := b.sandbox.ConfirmFile(appA)
	files.ServeFile("have.example.com", name, content)
	rec := b.enqueueWait(t, tasks.JumpDomainChange{Platform: appA, Action: tasks.ActionAdd, Domains: []string{"have.example.com"}})
	require.Equal(t, tasks.StatusSucceeded, rec.Status, rec.Error)
	files.Serve("have.example.com", "/"+name, "gone") // no longer served: it is on the platform already

	rec = b.enqueueWait(t, tasks.JumpDomainChange{Platform: appA, Action: tasks.ActionAdd, Ensure: true, Domains: []string{"have.example.com", "new.example.com"}})
	assert.Equal(t, tasks.StatusFailed, rec.Status)
	assert.Equal(t, []string{"new.example.com"}, keys(rec.Preflight))
	assert.Contains(t, rec.Error, "new.example.com")
	assert.Equal(t, 1, callsOf(b.sandbox, appA, "get"))
	assert.Equal(t, 1, callsOf(b.sandbox, appA, "add"), "only the first change added")
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	return out
}

// get and delete changes, and changes with the preflight off, never touch
// the preflight: no Redis command of it, no fetch, no file asked for.
func TestPreflightCostsNothingWhereItDoesNotApply(t *testing.T) {
	t.Parallel()
	files := preflighttest.NewServer(t)
	b := setup(t, redistest.Real, setupOpts{files: files, preflightMode: tasks.PreflightEnforce})
	var touched atomic.Int32
	b.redis.Client.AddHook(preflightKeys{touched: &touched})
	for _, c := range []tasks.JumpDomainChange{
		{Platform: appA, Action: tasks.ActionGet},
		{Platform: appA, Action: tasks.ActionDelete, Domains: []string{"old.example.com"}},
		{Platform: appA, Action: tasks.ActionAdd, Domains: []string{"x.example.com"}, Preflight: tasks.PreflightOff},
	} {
		rec := b.enqueueWait(t, c)
		assert.True(t, rec.Status.Final())
		assert.Nil(t, rec.Preflight)
	}
	assert.Zero(t, touched.Load(), "Redis commands on preflight keys")
	assert.Zero(t, b.sandbox.Stats().Calls["get_domain_confirmfile 0"])
	assert.Zero(t, files.CheckerHits("x.example.com"))
}

// preflightKeys counts Redis commands that name a preflight key.
type preflightKeys struct{ touched *atomic.Int32 }

func (preflightKeys) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h preflightKeys) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.count(cmd)
		return next(ctx, cmd)
	}
}
func (h preflightKeys) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			h.count(c)
		}
		return next(ctx, cmds)
	}
}
func (h preflightKeys) count(cmd redis.Cmder) {
	for _, a := range cmd.Args() {
		if s, ok := a.(string); ok && (strings.Contains(s, "confirmfile:") || strings.Contains(s, "preflight:check:")) {
			h.touched.Add(1)
			return
		}
	}
}

// A dry run shows the preflight of every platform, summed up.
func TestPreflightDryRunSummary(t *testing.T) {
	t.Parallel()
	files := preflighttest.NewServer(t)
	platforms := manyPlatforms(10)
	b, _ := setupRollouts(t, platforms, setupOpts{files: files})
	for _, p := range platforms[:7] {
		name, content := b.sandbox.ConfirmFile(p)
		files.ServeFile(filesDomain, name, content)
	}
	svc := rollout.New(b.redis.Client, b.client, rollout.Config{
		Prefix: b.redis.Prefix, Platforms: platforms, Preflight: b.preflight(t, files),
	})
	r, err := svc.Create(context.Background(), rollout.Spec{Action: tasks.ActionAdd, Domains: []string{filesDomain}, All: true, DryRun: true})
	require.NoError(t, err)
	require.NotNil(t, r.PreflightPlan)
	assert.Equal(t, 10, r.PreflightPlan.Platforms)
	assert.Equal(t, 3, r.PreflightPlan.Failed)
	require.Len(t, r.PreflightPlan.Groups, 1)
	g := r.PreflightPlan.Groups[0]
	assert.Equal(t, filesDomain, g.Domain)
	assert.Equal(t, "status", g.Result)
	assert.Equal(t, 3, g.Platforms)
	assert.Contains(t, r.PreflightPlan.Lines()[1], "3 of 10 platforms: file missing on files.example.com")
	assert.Zero(t, len(b.sandbox.Calls())-b.sandbox.Stats().Calls["get_domain_confirmfile 0"]-tokenCalls(b), "a dry run changes nothing")
}

func tokenCalls(b *testBundle) int {
	n := 0
	for k, v := range b.sandbox.Stats().Calls {
		if strings.HasPrefix(k, "api_component_token") {
			n += v
		}
	}
	return n
}

// WeChat refusing the file: warn goes on (the record says it was not
// checked), enforce fails the change without a call; a refused token
// pauses the platform without using an attempt.
func TestPreflightWithoutTheFile(t *testing.T) {
	t.Parallel()
	var asked atomic.Int32
	refuse := func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if strings.HasSuffix(r.URL.Path, "/get_domain_confirmfile") {
				asked.Add(1)
				_, _ = w.Write([]byte(`{"errcode":48001,"errmsg":"api unauthorized"}`))
				return
			}
			next.ServeHTTP(w, r)
		})
	}
	files := preflighttest.NewServer(t)
	b := setup(t, redistest.Real, setupOpts{files: files, preflightMode: tasks.PreflightWarn, upstream: refuse})

	rec := b.enqueueWait(t, tasks.JumpDomainChange{Platform: appA, Action: tasks.ActionAdd, Domains: []string{"a.example.com"}})
	assert.Equal(t, tasks.StatusPartial, rec.Status, "called: the sandbox found no file")
	assert.Contains(t, rec.Preflight["a.example.com"], "not checked: ")
	assert.Contains(t, rec.Preflight["a.example.com"], "48001")
	assert.False(t, rec.PreflightFailed())

	rec = b.enqueueWait(t, tasks.JumpDomainChange{Platform: appA, Action: tasks.ActionAdd, Domains: []string{"b.example.com"}, Preflight: tasks.PreflightEnforce})
	assert.Equal(t, tasks.StatusFailed, rec.Status)
	assert.Contains(t, rec.Error, "could not get the platform's verification file")
	assert.Contains(t, rec.Error, "48001")
	assert.Zero(t, callsOf(b.sandbox, appA, "add")-1, "no call beyond the first change's")
	assert.EqualValues(t, 1, asked.Load(), "a refusal for good is remembered, not asked again per change")

	b.sandbox.SetFaults(appB, wechattest.Faults{TokenErrCode: 61004})
	ctx := context.Background()
	rec, err := b.client.Enqueue(ctx, tasks.JumpDomainChange{Platform: appB, Action: tasks.ActionAdd, Domains: []string{"c.example.com"}, Preflight: tasks.PreflightEnforce}, tasks.EnqueueOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		rec, err = b.client.Get(ctx, rec.TaskID)
		return err == nil && strings.Contains(rec.Error, "platform paused")
	}, 10*time.Second, 20*time.Millisecond)
	assert.Zero(t, rec.Attempts)
	assert.Equal(t, tasks.StatusRetrying, rec.Status)
}
