package worker_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/limit"
	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/tasks"
)

// byKey counts a worker's commands by what they touch: the change's
// record, a pause, a token, asynq's task (its dequeue and end).
type byKey struct {
	mu     sync.Mutex
	counts map[string]int
}

func (k *byKey) add(cmd redis.Cmder) {
	args := cmd.Args()
	name := strings.ToLower(cmd.Name())
	key := ""
	if (name == "evalsha" || name == "eval") && len(args) > 3 {
		key, _ = args[3].(string)
	} else if len(args) > 1 {
		key, _ = args[1].(string)
	}
	what := ""
	switch {
	case strings.Contains(key, ":record:"):
		what = "record " + name
	case strings.Contains(key, ":pause:"):
		what = "pause"
	case strings.Contains(key, ":token:"):
		what = "token"
	case strings.Contains(key, "limit"):
		what = "limiter " + name
	case strings.Contains(key, ":t:"), strings.HasSuffix(key, ":active"):
		what = "asynq task"
	case strings.HasSuffix(key, ":pending") && found(cmd):
		what = "asynq task" // a dequeue that found one; polls of an empty queue are not the change's
	default:
		return
	}
	k.mu.Lock()
	k.counts[what]++
	k.mu.Unlock()
}

// found reports whether a script call answered something (a dequeue
// that found a task).
func found(cmd redis.Cmder) bool {
	c, ok := cmd.(*redis.Cmd)
	return ok && c.Err() == nil && c.Val() != nil
}

func (k *byKey) reset() map[string]int {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := k.counts
	k.counts = map[string]int{}
	return out
}

// TestAChangeCostsTwoRecordWrites: once a worker has served a platform,
// a change costs it two Redis commands of its own (the record as it
// starts, as it ends: no read before either) beside asynq's two, and
// neither a pause nor a token read.
func TestAChangeCostsTwoRecordWrites(t *testing.T) {
	k := &byKey{counts: map[string]int{}}
	b := setup(t, redistest.Real, setupOpts{hook: redistest.Seen(k.add), concurrency: 32})
	runCounted(t, b, k, map[string]int{"record evalsha": 2, "asynq task": 2})
}

// TestARateLimitedChangeCostsOneMore: under a rate limit a change takes
// its call slot (one script call); the limiter hears of WeChat's answer
// in the record's final write, not in a command of its own.
func TestARateLimitedChangeCostsOneMore(t *testing.T) {
	k := &byKey{counts: map[string]int{}}
	fast := limit.Rate{PerSecond: 1000, Burst: 100}
	b := setup(t, redistest.Real, setupOpts{hook: redistest.Seen(k.add), concurrency: 32, rates: map[string]limit.Rate{appA: fast, appB: fast}})
	runCounted(t, b, k, map[string]int{"record evalsha": 2, "asynq task": 2, "limiter evalsha": 1})
}

// runCounted runs changes through a worker that served each platform
// already, and compares its commands per change with want.
func runCounted(t *testing.T, b *testBundle, k *byKey, want map[string]int) {
	t.Helper()
	ctx := context.Background()
	// The worker's first look at each platform (its token, its pause),
	// twice: the first may come before it follows the fleet's changes.
	for i := 0; i < 2; i++ {
		for _, app := range []string{appA, appB} {
			b.enqueueWait(t, tasks.JumpDomainChange{Platform: app, Action: tasks.ActionAdd, Domains: []string{"warm.example.com"}})
		}
	}
	time.Sleep(300 * time.Millisecond) // asynq ends the last task after its record
	k.reset()

	const n = 20
	var ids []string
	for i := 0; i < n; i++ {
		app := []string{appA, appB}[i%2]
		rec, err := b.client.Enqueue(ctx, tasks.JumpDomainChange{Platform: app, Action: tasks.ActionAdd, Domains: []string{fmt.Sprintf("d%d.example.com", i)}}, tasks.EnqueueOptions{})
		require.NoError(t, err)
		ids = append(ids, rec.TaskID)
	}
	for _, id := range ids {
		rec, err := b.client.Wait(ctx, id)
		require.NoError(t, err)
		require.Equal(t, tasks.StatusSucceeded, rec.Status, rec.Error)
		assert.Equal(t, 1, rec.Attempts)
	}
	time.Sleep(300 * time.Millisecond)
	got := k.reset()
	for what := range want {
		want[what] *= n
	}
	assert.Equal(t, want, got)
}
