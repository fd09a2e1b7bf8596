package worker_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/internal/wechattest"
	"github.com/wxdomain/wxdomain/tasks"
)

// TestGetRollout: a get rollout fans out a get per platform, changes
// nothing, counts exactly despite busy answers, and each record carries
// the platform's lists.
func TestGetRollout(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	platforms := manyPlatforms(60)
	b, svc := setupRollouts(t, platforms, setupOpts{workers: 2, concurrency: 8, maxAttempts: 12})
	want := map[string][]string{}
	for i, app := range platforms {
		p := wechattest.Platform{AppID: app, Secret: "secret-" + app, Released: i%4 != 0}
		if i%2 == 0 {
			p.Testing = []string{fmt.Sprintf("p%d.example.com", i), "shared.example.com"}
			if p.Released {
				p.Published = []string{"shared.example.com"}
			}
		}
		b.sandbox.PutPlatform(p)
		want[app] = p.Testing
		if i%3 == 0 {
			b.sandbox.SetFaults(app, wechattest.Faults{BusyRate: 0.5})
		}
	}
	r, err := svc.Create(ctx, rollout.Spec{Name: "read all", Action: tasks.ActionGet, All: true})
	require.NoError(t, err)
	assert.Equal(t, 60, r.Total)
	r = waitRollout(t, svc, r.ID)
	assert.Equal(t, rollout.StatusDone, r.Status)
	assert.Equal(t, rollout.Counts{Succeeded: 60}, r.Counts, "exact counts despite retries")

	for i, app := range platforms {
		if i%3 != 0 {
			assert.Equal(t, 1, callsOf(b.sandbox, app, "get"), "one get for %s", app)
		}
		for _, a := range []string{"set", "add", "delete"} {
			assert.Zero(t, callsOf(b.sandbox, app, a), "%s: no %s", app, a)
		}
	}
	done, cursor, err := svc.Tasks(ctx, r.ID, tasks.StatusSucceeded, "", 1000)
	require.NoError(t, err)
	assert.Empty(t, cursor)
	require.Len(t, done, 60)
	for _, o := range done {
		rec, err := b.client.Get(ctx, o.TaskID)
		require.NoError(t, err)
		assert.Equal(t, tasks.ActionGet, rec.Action)
		assert.Equal(t, r.ID, rec.RolloutID)
		require.NotNil(t, rec.TestingDomains, "%s carries testing_domains", o.Platform)
		if want[o.Platform] == nil {
			assert.Empty(t, *rec.TestingDomains, o.Platform)
		} else {
			assert.Equal(t, want[o.Platform], *rec.TestingDomains, o.Platform)
		}
		p, _ := b.sandbox.Platform(o.Platform)
		if p.Released {
			require.NotNil(t, rec.PublishedDomains, o.Platform)
			assert.ElementsMatch(t, p.Published, *rec.PublishedDomains, o.Platform)
		} else {
			assert.Nil(t, rec.PublishedDomains, "%s: never released, WeChat leaves published out", o.Platform)
		}
	}
}
