package tasks_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/tasks"
)

// A record keeps its timeline (every attempt, answer and wait, bounded),
// and a final answer keeps the platform's lists for the inventory.
func TestRecordTimelineAndLists(t *testing.T) {
	t.Parallel()
	rb := redistest.Mini(t)
	s := tasks.NewStore(rb.Client, rb.Prefix, time.Hour)
	ctx := context.Background()
	const id, app = "0123456789abcdef0123456789abcdef", "wx1234567890abcdef"
	_, err := s.Create(ctx, tasks.NewRecord(id, tasks.JumpDomainChange{Platform: app, Action: tasks.ActionAdd, Domains: []string{"a.com"}}, "q"))
	require.NoError(t, err)
	busy := -1
	steps := []func(*tasks.Record){
		func(r *tasks.Record) { r.Status, r.Attempts = tasks.StatusRunning, 1 },
		func(r *tasks.Record) {
			r.Status, r.ErrCode, r.Error = tasks.StatusRetrying, &busy, "WeChat is busy (errcode -1)"
		},
		func(r *tasks.Record) { r.Error = "WeChat is busy (errcode -1)" }, // no change: no step
		func(r *tasks.Record) { r.Status, r.Attempts, r.Error = tasks.StatusRunning, 2, "" },
		func(r *tasks.Record) {
			zero, list := 0, []string{"a.com"}
			r.Status, r.ErrCode, r.TestingDomains = tasks.StatusSucceeded, &zero, &list
		},
	}
	for _, step := range steps {
		_, err := s.Update(ctx, id, func(r *tasks.Record) error { step(r); return nil })
		require.NoError(t, err)
	}
	rec, err := s.Get(ctx, id)
	require.NoError(t, err)
	var got []string
	for _, e := range rec.Events {
		got = append(got, fmt.Sprintf("%s %d %d %s", e.Status, e.Attempt, deref(e.ErrCode), e.Detail))
	}
	assert.Equal(t, []string{
		"queued 0 0 ",
		"running 1 0 ",
		"retrying 1 -1 WeChat is busy (errcode -1)",
		"running 2 -1 ",
		"succeeded 2 0 ",
	}, got)

	lists, err := s.PlatformLists(ctx, []string{app, "wxfedcba0987654321"})
	require.NoError(t, err)
	require.Contains(t, lists, app)
	assert.Equal(t, []string{"a.com"}, lists[app].Testing)
	assert.Equal(t, id, lists[app].TaskID)
	assert.NotContains(t, lists, "wxfedcba0987654321")
	_, err = s.PlatformLists(ctx, []string{"_global"})
	assert.Error(t, err, "appids are checked before they name a key")

	// Bounded: the first step and the latest ones.
	const id2 = "1123456789abcdef0123456789abcdef"
	_, err = s.Create(ctx, tasks.NewRecord(id2, tasks.JumpDomainChange{Platform: app, Action: tasks.ActionGet}, "q"))
	require.NoError(t, err)
	for i := range 100 {
		_, err := s.Update(ctx, id2, func(r *tasks.Record) error {
			r.Status, r.Error = tasks.StatusRetrying, fmt.Sprintf("wait %d", i)
			return nil
		})
		require.NoError(t, err)
	}
	rec, err = s.Get(ctx, id2)
	require.NoError(t, err)
	require.Len(t, rec.Events, tasks.MaxEvents)
	assert.Equal(t, tasks.StatusQueued, rec.Events[0].Status)
	assert.Equal(t, "wait 99", rec.Events[tasks.MaxEvents-1].Detail)
}

func deref(p *int) int {
	if p == nil {
		return 0
	}
	return *p
}
