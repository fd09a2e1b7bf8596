package worker_test

import (
	"context"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

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
	}{
		{
			name: "no ticket",
			breakIt: func(b *testBundle) {
				require.NoError(t, b.redis.Client.Del(context.Background(), b.redis.Prefix+"ticket:"+appB).Err())
			},
			wantText: "no component_verify_ticket stored for platform " + appB,
		},
		{
			name:     "ticket expired",
			breakIt:  func(b *testBundle) { b.sandbox.SetFaults(appB, wechattest.Faults{TokenErrCode: 61005}) },
			wantText: "ticket is expired or invalid",
		},
		{
			name:     "IP not whitelisted",
			breakIt:  func(b *testBundle) { b.sandbox.SetFaults(appB, wechattest.Faults{TokenErrCode: 61004}) },
			wantText: "whitelist",
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

			// The operator fixes it and stores a fresh ticket: the changes run now.
			b.sandbox.SetFaults(appB, wechattest.Faults{})
			n, err := b.client.SetTicket(ctx, appB, "ticket-"+appB)
			require.NoError(t, err)
			assert.Equal(t, len(ids), n)
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
