package tasks_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/tasks"
)

var durableChange = tasks.JumpDomainChange{Platform: "wx0123456789abcdef", Action: tasks.ActionAdd, Domains: []string{"a.example.com"}}

// TestEnqueueWaitsForTheReplica: with a replica required, a submission is
// acknowledged only once the replica has it; with the replica frozen, the
// caller gets an error that says so, and the same key later yields one
// change.
func TestEnqueueWaitsForTheReplica(t *testing.T) {
	t.Parallel()
	p := redistest.StartPair(t)
	ctx := context.Background()
	unconfirmed := 0
	c := tasks.NewClient(p.Client, tasks.ClientConfig{Prefix: p.Prefix, Queue: p.Queue,
		Durability: tasks.Durability{MinReplicas: 1, Timeout: 200 * time.Millisecond, OnUnconfirmed: func() { unconfirmed++ }}})
	t.Cleanup(func() { _ = c.Close() })

	rec, err := c.Enqueue(ctx, durableChange, tasks.EnqueueOptions{IdempotencyKey: "k1"})
	require.NoError(t, err)
	assert.Equal(t, tasks.StatusQueued, rec.Status)

	p.StopReplica()
	start := time.Now()
	_, err = c.Enqueue(ctx, durableChange, tasks.EnqueueOptions{IdempotencyKey: "k2"})
	require.ErrorIs(t, err, tasks.ErrUnconfirmed)
	assert.True(t, tasks.Retryable(err))
	assert.Contains(t, err.Error(), "0 of 1 Redis replicas took it within 200ms")
	assert.Contains(t, err.Error(), "same idempotency key")
	assert.Less(t, time.Since(start), 2*time.Second)
	assert.Equal(t, 1, unconfirmed)

	p.ContinueReplica()
	again, err := c.Enqueue(ctx, durableChange, tasks.EnqueueOptions{IdempotencyKey: "k2"})
	require.NoError(t, err)
	assert.True(t, again.Replayed, "the first try's change, not a second one")
	keys, err := p.Client.Keys(ctx, p.Prefix+"record:*").Result()
	require.NoError(t, err)
	assert.Len(t, keys, 2, "k1 and k2: one change each")
}

// TestEnqueueRetriesUntilConfirmed: a client with Retry tries again under
// one idempotency key (made up when none is given) until the replica
// confirms, within its budget; one change results.
func TestEnqueueRetriesUntilConfirmed(t *testing.T) {
	t.Parallel()
	p := redistest.StartPair(t)
	ctx := context.Background()
	var retries []string
	c := tasks.NewClient(p.Client, tasks.ClientConfig{Prefix: p.Prefix, Queue: p.Queue,
		Durability: tasks.Durability{MinReplicas: 1, Timeout: 100 * time.Millisecond},
		Retry:      10 * time.Second,
		OnRetry:    func(err error, _ time.Duration) { retries = append(retries, err.Error()) }})
	t.Cleanup(func() { _ = c.Close() })
	p.StopReplica()
	go func() {
		time.Sleep(700 * time.Millisecond)
		p.ContinueReplica()
	}()
	rec, err := c.Enqueue(ctx, durableChange, tasks.EnqueueOptions{})
	require.NoError(t, err)
	assert.NotEmpty(t, retries, "the first tries were not confirmed")
	for _, r := range retries {
		assert.True(t, strings.Contains(r, "not confirmed"), r)
	}
	keys, err := p.Client.Keys(ctx, p.Prefix+"record:*").Result()
	require.NoError(t, err)
	assert.Equal(t, []string{p.Prefix + "record:" + rec.TaskID}, keys, "one change, however many tries")

	// Out of budget: the error, not a success.
	short := tasks.NewClient(p.Client, tasks.ClientConfig{Prefix: p.Prefix, Queue: p.Queue,
		Durability: tasks.Durability{MinReplicas: 1, Timeout: 100 * time.Millisecond}, Retry: 500 * time.Millisecond})
	t.Cleanup(func() { _ = short.Close() })
	p.StopReplica()
	defer p.ContinueReplica()
	_, err = short.Enqueue(ctx, durableChange, tasks.EnqueueOptions{})
	require.Error(t, err)
	assert.True(t, errors.Is(err, tasks.ErrUnconfirmed), "%v", err)
}

// TestFinalRecordWaitsForTheReplica: a record moved to a final status is
// not reported final until the replica has it; read back final later, it
// is confirmed again.
func TestFinalRecordWaitsForTheReplica(t *testing.T) {
	t.Parallel()
	p := redistest.StartPair(t)
	ctx := context.Background()
	store := tasks.NewStore(p.Client, p.Prefix, time.Hour).WithDurability(tasks.Durability{MinReplicas: 1, Timeout: 100 * time.Millisecond})
	rec := tasks.NewRecord("0123456789abcdef0123456789abcdef", durableChange, p.Queue)
	_, err := store.Create(ctx, rec)
	require.NoError(t, err)
	_, err = store.Update(ctx, rec.TaskID, func(r *tasks.Record) error { r.Status = tasks.StatusRunning; return nil })
	require.NoError(t, err, "not final: not waited for")
	p.StopReplica()
	_, err = store.Update(ctx, rec.TaskID, func(r *tasks.Record) error { r.Status = tasks.StatusSucceeded; return nil })
	require.ErrorIs(t, err, tasks.ErrUnconfirmed)
	_, err = store.Update(ctx, rec.TaskID, func(*tasks.Record) error { return nil })
	require.ErrorIs(t, err, tasks.ErrUnconfirmed, "final, but still not on the replica")
	p.ContinueReplica()
	_, err = store.Update(ctx, rec.TaskID, func(*tasks.Record) error { return nil })
	require.ErrorIs(t, err, tasks.ErrFinal, "confirmed now")
}
