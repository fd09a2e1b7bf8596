package rollout_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/tasks"
)

// lists is a stub of WeChat's get: each platform's testing and published
// lists, or an error; it counts the reads.
type lists struct {
	mu      sync.Mutex
	testing map[string][]string
	pub     map[string][]string
	fail    map[string]error
	reads   map[string]int
	// at counts the reads under way; most is the most at once.
	at, most atomic.Int32
	delay    time.Duration
}

func (l *lists) read(ctx context.Context, appid string) ([]string, []string, error) {
	n := l.at.Add(1)
	defer l.at.Add(-1)
	for {
		m := l.most.Load()
		if n <= m || l.most.CompareAndSwap(m, n) {
			break
		}
	}
	time.Sleep(l.delay)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.reads[appid]++
	if err := l.fail[appid]; err != nil {
		return nil, nil, err
	}
	return l.testing[appid], l.pub[appid], nil
}

func ensureService(t *testing.T, all []string, read rollout.ListsFunc) *rollout.Service {
	t.Helper()
	rb := redistest.Mini(t)
	client := tasks.NewClient(rb.Client, tasks.ClientConfig{Prefix: rb.Prefix, Queue: rb.Queue})
	t.Cleanup(func() { _ = client.Close() })
	svc := rollout.New(rb.Client, client, rollout.Config{Prefix: rb.Prefix, Queue: rb.Queue, Platforms: all, Lists: read})
	t.Cleanup(func() { _ = svc.Close() })
	return svc
}

func domains(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("d%d.example.com", i)
	}
	return out
}

// An ensure dry run reads each platform's lists once and shows, per
// platform, nothing to do, the exact call, the limit it would break, or
// why its lists could not be read; its plan is only the calls.
func TestEnsureDryRunShowsTheDifference(t *testing.T) {
	t.Parallel()
	const (
		done    = "wx00000000000000b1" // has both domains
		partial = "wx00000000000000b2" // has shop, not new
		full    = "wx00000000000000b3" // 199 domains: three more is over 200
		broken  = "wx00000000000000b4" // cannot be read
		unpub   = "wx00000000000000b5" // both in testing, none published
	)
	all := []string{done, partial, full, broken, unpub}
	l := &lists{
		testing: map[string][]string{
			done:    {"shop.example.com", "new.example.com", "old.example.com"},
			partial: {"shop.example.com"},
			full:    domains(199),
			unpub:   {"shop.example.com", "new.example.com"},
		},
		pub: map[string][]string{
			done: {"new.example.com", "shop.example.com"}, partial: {"shop.example.com"}, full: domains(199), unpub: {},
		},
		fail:  map[string]error{broken: errors.New("modify_wxa_jump_domain (get): WeChat is busy (errcode -1: system error)")},
		reads: map[string]int{},
	}
	svc := ensureService(t, all, l.read)
	ctx := context.Background()

	r, err := svc.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"shop.example.com", "new.example.com", "third.example.com"}, Publish: true, All: true, Ensure: true, DryRun: true})
	require.NoError(t, err)
	assert.Equal(t, rollout.ModeDryRun, r.Mode)
	sum := r.EnsurePlan
	require.NotNil(t, sum)
	assert.True(t, sum.ReadLists)
	for _, p := range all {
		assert.Equal(t, 1, l.reads[p], "one get for %s", p)
	}
	want := map[string]rollout.EnsureStep{
		done: {Platform: done, Result: rollout.EnsureCall, Call: &tasks.JumpDomainChange{Platform: done, Action: tasks.ActionAdd, Domains: []string{"third.example.com"}, Publish: true}},
		partial: {Platform: partial, Result: rollout.EnsureCall, Call: &tasks.JumpDomainChange{
			Platform: partial, Action: tasks.ActionAdd, Domains: []string{"new.example.com", "third.example.com"}, Publish: true,
		}},
		full:   {Platform: full, Result: rollout.EnsureWouldFail, Error: "adding 3 domains would make 202, over the limit of 200"},
		broken: {Platform: broken, Result: rollout.EnsureNotRead, Error: "modify_wxa_jump_domain (get): WeChat is busy (errcode -1: system error)"},
		unpub: {Platform: unpub, Result: rollout.EnsureCall, Call: &tasks.JumpDomainChange{
			Platform: unpub, Action: tasks.ActionAdd, Domains: []string{"shop.example.com", "new.example.com", "third.example.com"}, Publish: true,
		}},
	}
	require.Len(t, sum.Steps, len(all))
	for i, st := range sum.Steps {
		assert.Equal(t, all[i], st.Platform, "in the rollout's order")
		assert.Equal(t, want[st.Platform], st, st.Platform)
	}
	assert.Equal(t, 3, sum.Calls)
	assert.Equal(t, 1, sum.WouldFail)
	assert.Equal(t, 1, sum.NotRead)
	assert.Zero(t, sum.NothingToDo)
	// plan: only the calls, each for the difference.
	require.Len(t, r.Plan, 3)
	assert.Equal(t, *want[done].Call, r.Plan[0])
	assert.Equal(t, *want[partial].Call, r.Plan[1])
	assert.Equal(t, *want[unpub].Call, r.Plan[2])

	// The case: shop is there, new is not; and one in the desired state.
	r, err = svc.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"shop.example.com", "new.example.com"}, Platforms: []string{partial, done, full}, Ensure: true, DryRun: true})
	require.NoError(t, err)
	assert.Equal(t, []string{
		"ensure dry run: read the current lists of 3 platforms with one get call each (read-only, on their rate limits)",
		"platforms: 1 would call, 1 nothing to do, 1 would fail, 0 lists not read",
		partial + ": would call add new.example.com",
		done + ": nothing to do (already in the desired state)",
		full + ": would fail: adding 2 domains would make 201, over the limit of 200",
	}, r.EnsurePlan.Lines())
	assert.Equal(t, []tasks.JumpDomainChange{{Platform: partial, Action: tasks.ActionAdd, Domains: []string{"new.example.com"}}}, r.Plan)

	// Over the limit, unreadable, published, delete and set.
	r, err = svc.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"a.example.com", "b.example.com", "c.example.com"}, Publish: true, Platforms: []string{full, broken}, Ensure: true, DryRun: true})
	require.NoError(t, err)
	assert.Equal(t, []string{
		"ensure dry run: read the current lists of 2 platforms with one get call each (read-only, on their rate limits)",
		"platforms: 0 would call, 0 nothing to do, 1 would fail, 1 lists not read",
		full + ": would fail: adding 3 domains would make 202, over the limit of 200",
		broken + ": could not read its lists: modify_wxa_jump_domain (get): WeChat is busy (errcode -1: system error)",
	}, r.EnsurePlan.Lines())
	assert.Empty(t, r.Plan, "no call would be made")

	r, err = svc.Create(ctx, rollout.Spec{Action: tasks.ActionDelete, Domains: []string{"old.example.com", "gone.example.com"}, Publish: true, Platforms: []string{done, partial}, Ensure: true, DryRun: true})
	require.NoError(t, err)
	assert.Equal(t, []string{
		done + ": would call delete old.example.com (testing and published)",
		partial + ": nothing to do (already in the desired state)",
	}, r.EnsurePlan.Lines()[2:])

	r, err = svc.Create(ctx, rollout.Spec{Action: tasks.ActionSet, Domains: []string{"shop.example.com"}, Platforms: []string{partial, unpub}, Ensure: true, DryRun: true})
	require.NoError(t, err)
	assert.Equal(t, []string{
		partial + ": nothing to do (already in the desired state)",
		unpub + ": would call set shop.example.com",
	}, r.EnsurePlan.Lines()[2:])

	// A dry run that is not ensure reads nothing and plans every platform.
	before := l.reads[done]
	r, err = svc.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"shop.example.com"}, All: true, DryRun: true})
	require.NoError(t, err)
	assert.Nil(t, r.EnsurePlan)
	assert.Len(t, r.Plan, len(all))
	assert.Equal(t, before, l.reads[done])
}

// Without a way to read the lists, an ensure dry run says so and shows
// the plain plan.
func TestEnsureDryRunWithoutLists(t *testing.T) {
	t.Parallel()
	svc := ensureService(t, platforms, nil)
	r, err := svc.Create(context.Background(), rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"shop.example.com"}, All: true, Ensure: true, DryRun: true})
	require.NoError(t, err)
	require.NotNil(t, r.EnsurePlan)
	assert.False(t, r.EnsurePlan.ReadLists)
	assert.Empty(t, r.EnsurePlan.Steps)
	lines := r.EnsurePlan.Lines()
	require.Len(t, lines, 1)
	assert.Contains(t, lines[0], "ensure dry run: the current lists were not read")
	require.Len(t, r.Plan, len(platforms))
	for i, c := range r.Plan {
		assert.Equal(t, tasks.JumpDomainChange{Platform: platforms[i], Action: tasks.ActionAdd, Domains: []string{"shop.example.com"}, Ensure: true}, c)
	}
}

// At most 8 platforms' lists are read at once; a dry run whose context
// ends fails rather than showing a partial plan.
func TestEnsureDryRunBoundsItsReads(t *testing.T) {
	t.Parallel()
	all := make([]string, 40)
	for i := range all {
		all[i] = fmt.Sprintf("wx%016x", 0xc00+i)
	}
	l := &lists{testing: map[string][]string{}, pub: map[string][]string{}, fail: map[string]error{}, reads: map[string]int{}, delay: 20 * time.Millisecond}
	svc := ensureService(t, all, l.read)
	r, err := svc.Create(context.Background(), rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"a.example.com"}, All: true, Ensure: true, DryRun: true})
	require.NoError(t, err)
	assert.Equal(t, 40, r.EnsurePlan.Calls)
	assert.Len(t, r.Plan, 40)
	assert.LessOrEqual(t, l.most.Load(), int32(8))
	assert.Greater(t, l.most.Load(), int32(1), "read in parallel")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	_, err = svc.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"a.example.com"}, All: true, Ensure: true, DryRun: true})
	assert.ErrorIs(t, err, context.DeadlineExceeded)
}

// A get rollout is accepted; a rollout with no valid action names get
// among the actions.
func TestRolloutActions(t *testing.T) {
	t.Parallel()
	_, svc := setup(t)
	ctx := context.Background()
	r, err := svc.Create(ctx, rollout.Spec{Action: tasks.ActionGet, All: true})
	require.NoError(t, err)
	assert.Equal(t, tasks.ActionGet, r.Action)
	assert.Equal(t, len(platforms), r.Total)

	_, err = svc.Create(ctx, rollout.Spec{Action: "list", All: true})
	var ve *tasks.ValidationError
	require.ErrorAs(t, err, &ve)
	assert.Equal(t, tasks.CodeInvalidAction, ve.Code())
	assert.Contains(t, err.Error(), "must be one of get, set, add, delete")

	_, err = svc.Create(ctx, rollout.Spec{Action: tasks.ActionGet, Ensure: true, All: true})
	require.ErrorAs(t, err, &ve)
	assert.Contains(t, err.Error(), "not get")
}
