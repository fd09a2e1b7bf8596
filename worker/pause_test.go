package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/pause"
	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/wechattest"
	"github.com/wxdomain/wxdomain/tasks"
)

func TestOperatorNeededDefersWithoutUsingAttempts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		breakIt  func(b *testBundle)
		wantText string
		wantKind pause.Kind
	}{
		{
			name: "no ticket",
			breakIt: func(b *testBundle) {
				require.NoError(t, b.redis.Client.Del(context.Background(), b.redis.Prefix+"ticket:"+appB).Err())
			},
			wantText: "no component_verify_ticket stored for platform " + appB,
			wantKind: pause.KindNoTicket,
		},
		{
			name:     "ticket expired",
			breakIt:  func(b *testBundle) { b.sandbox.SetFaults(appB, wechattest.Faults{TokenErrCode: 61005}) },
			wantText: "ticket is expired or invalid",
			wantKind: pause.KindTicketRefused,
		},
		{
			name:     "IP not whitelisted",
			breakIt:  func(b *testBundle) { b.sandbox.SetFaults(appB, wechattest.Faults{TokenErrCode: 61004}) },
			wantText: "whitelist",
			wantKind: pause.KindIPNotWhitelisted,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			b := setup(t, redistest.Real, setupOpts{maxAttempts: 2})
			tt.breakIt(b)

			var ids []string
			for i := 0; i < 6; i++ {
				rec, err := b.client.Enqueue(ctx, tasks.JumpDomainChange{Platform: appB, Action: tasks.ActionGet}, tasks.EnqueueOptions{})
				require.NoError(t, err)
				ids = append(ids, rec.TaskID)
			}
			// Another platform is not held up.
			ok := b.enqueueWait(t, change(tasks.ActionAdd, false, "a.com"))
			require.Equal(t, tasks.StatusSucceeded, ok.Status)

			inspector := asynq.NewInspectorFromRedisClient(b.redis.Client)
			require.Eventually(t, func() bool {
				for _, id := range ids {
					r, err := b.client.Get(ctx, id)
					if err != nil || r.Status != tasks.StatusRetrying || r.NextAttemptAt == nil {
						return false
					}
				}
				return true
			}, 10*time.Second, 20*time.Millisecond)
			for _, id := range ids {
				r, err := b.client.Get(ctx, id)
				require.NoError(t, err)
				assert.Equal(t, 0, r.Attempts, "a deferral is not an attempt")
				assert.Contains(t, r.Error, tt.wantText)
				assert.WithinDuration(t, time.Now().Add(time.Minute), *r.NextAttemptAt, 10*time.Second)
				info, err := inspector.GetTaskInfo(b.redis.Queue, id)
				require.NoError(t, err)
				assert.Equal(t, 0, info.Retried, "asynq did not count a retry either")
				assert.Equal(t, asynq.TaskStateRetry, info.State)
			}
			warnings := b.logs.FilterMessage("platform paused; its changes wait").All()
			require.Len(t, warnings, 1, "logged once per pause, not once per task")
			assert.Equal(t, appB, warnings[0].ContextMap()["platform"])
			tokenCalls := 0
			for _, c := range b.sandbox.Calls() {
				if c.API == "api_component_token" && c.AppID == appB {
					tokenCalls++
				}
			}
			assert.LessOrEqual(t, tokenCalls, 1, "the token API was asked once per pause, not once per change")
			assert.Zero(t, b.sandbox.TokenFetches(appB), "no token was issued")

			p, paused, err := b.pauses.Get(ctx, appB)
			require.NoError(t, err)
			require.True(t, paused)
			assert.Equal(t, tt.wantKind, p.Kind)

			// The operator fixes it and stores a fresh ticket: a pause the
			// ticket cures ends, and the changes run now; any other stays
			// until the operator resumes the platform.
			b.sandbox.SetFaults(appB, wechattest.Faults{})
			res, err := b.client.SetTicket(ctx, appB, "ticket-"+appB, time.Time{})
			require.NoError(t, err)
			require.True(t, res.Stored)
			if tt.wantKind.EndsWithTicket() {
				assert.Equal(t, len(ids), res.ResumedChanges)
				require.NotNil(t, res.EndedPause)
				assert.Equal(t, tt.wantKind, res.EndedPause.Kind)
			} else {
				assert.Zero(t, res.ResumedChanges)
				require.NotNil(t, res.KeptPause)
				assert.Equal(t, tt.wantKind, res.KeptPause.Kind)
				_, paused, err := b.pauses.Get(ctx, appB)
				require.NoError(t, err)
				assert.True(t, paused, "a ticket does not cure this pause")
				r, err := b.client.Resume(ctx, appB)
				require.NoError(t, err)
				assert.Equal(t, len(ids), r.ResumedChanges)
				require.NotNil(t, r.EndedPause)
				assert.Equal(t, tt.wantKind, r.EndedPause.Kind)
			}
			for _, id := range ids {
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				r, err := b.client.Wait(wctx, id)
				cancel()
				require.NoError(t, err)
				assert.Equal(t, tasks.StatusSucceeded, r.Status)
				assert.Equal(t, 1, r.Attempts)
			}
		})
	}
}

// TestRefusalOfAReplacedTicketDoesNotPause: WeChat refuses a ticket while a
// newer one is being stored; the refusal was about the old ticket, so the
// platform is not paused and the change tries the new ticket at once.
func TestRefusalOfAReplacedTicketDoesNotPause(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, redistest.Real, setupOpts{maxAttempts: 3})
	b.sandbox.SetFaults(appB, wechattest.Faults{TokenErrCode: 61006, Latency: 700 * time.Millisecond})
	rec, err := b.client.Enqueue(ctx, tasks.JumpDomainChange{Platform: appB, Action: tasks.ActionGet}, tasks.EnqueueOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		for _, c := range b.sandbox.Calls() {
			if c.API == "api_component_token" && c.AppID == appB {
				return true
			}
		}
		r, err := b.client.Get(ctx, rec.TaskID)
		return err == nil && r.Status == tasks.StatusRunning
	}, 5*time.Second, 5*time.Millisecond, "the token fetch is under way")
	// WeChat pushes a new ticket while the old one's refusal is on its way.
	b.sandbox.SetFaults(appB, wechattest.Faults{})
	res, err := b.client.SetTicket(ctx, appB, "ticket-new", time.Time{})
	require.NoError(t, err)
	require.True(t, res.Stored)

	wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	final, err := b.client.Wait(wctx, rec.TaskID)
	require.NoError(t, err)
	assert.Equal(t, tasks.StatusSucceeded, final.Status)
	assert.Equal(t, 1, final.Attempts, "the refusal of the old ticket used no attempt")
	_, paused, err := b.pauses.Get(ctx, appB)
	require.NoError(t, err)
	assert.False(t, paused)
	assert.Empty(t, b.logs.FilterMessage("platform paused; its changes wait").All(), "no pause about a ticket already replaced")
	n, err := b.redis.Client.Exists(ctx, b.redis.Prefix+"token_refusal:"+appB).Result()
	require.NoError(t, err)
	assert.Zero(t, n, "the refusal of the old ticket is not remembered")
}
