package worker_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/wechattest"
	"github.com/wxdomain/wxdomain/tasks"
)

func change(action tasks.Action, publish bool, domains ...string) tasks.JumpDomainChange {
	return tasks.JumpDomainChange{Platform: appA, Action: action, Domains: domains, Publish: publish}
}

func ptr[T any](v T) *T { return &v }

// modifyCalls counts calls of modify_wxa_jump_domain the sandbox answered.
func modifyCalls(sb *wechattest.Sandbox) int {
	n := 0
	for _, c := range sb.Calls() {
		if c.API == "modify_wxa_jump_domain" {
			n++
		}
	}
	return n
}

func TestEndToEnd(t *testing.T) {
	t.Parallel()
	for _, be := range redistest.Backends() {
		t.Run(be.Name, func(t *testing.T) {
			t.Parallel()

			t.Run("each action", func(t *testing.T) {
				t.Parallel()
				b := setup(t, be.Open, setupOpts{})
				rec := b.enqueueWait(t, change(tasks.ActionSet, false, "a.com", "b.com"))
				assert.Equal(t, tasks.StatusSucceeded, rec.Status)
				assert.Equal(t, ptr([]string{"a.com", "b.com"}), rec.TestingDomains)
				assert.Equal(t, ptr([]string{}), rec.PublishedDomains, "released platform, nothing published yet")
				assert.Equal(t, ptr(0), rec.ErrCode)
				assert.Equal(t, 1, rec.Attempts)
				assert.NotNil(t, rec.FinishedAt)

				rec = b.enqueueWait(t, change(tasks.ActionAdd, true, "c.com"))
				assert.Equal(t, tasks.StatusSucceeded, rec.Status)
				assert.Equal(t, ptr([]string{"a.com", "b.com", "c.com"}), rec.TestingDomains)
				assert.Equal(t, ptr([]string{"c.com"}), rec.PublishedDomains)

				rec = b.enqueueWait(t, change(tasks.ActionDelete, false, "a.com", "not-there.com"))
				assert.Equal(t, tasks.StatusSucceeded, rec.Status)
				assert.Equal(t, ptr([]string{"b.com", "c.com"}), rec.TestingDomains)

				rec = b.enqueueWait(t, change(tasks.ActionGet, false))
				assert.Equal(t, tasks.StatusSucceeded, rec.Status)
				assert.Equal(t, ptr([]string{"b.com", "c.com"}), rec.TestingDomains)
				assert.Equal(t, ptr([]string{"c.com"}), rec.PublishedDomains)

				p, _ := b.sandbox.Platform(appA)
				assert.Equal(t, []string{"b.com", "c.com"}, p.Testing)
				assert.Equal(t, 4, modifyCalls(b.sandbox))
			})

			t.Run("busy is retried with backoff and the attempts are counted", func(t *testing.T) {
				t.Parallel()
				b := setup(t, be.Open, setupOpts{})
				b.sandbox.SetFaults(appA, wechattest.Faults{Script: []int{-1, -1}})
				rec := b.enqueueWait(t, change(tasks.ActionAdd, false, "a.com"))
				assert.Equal(t, tasks.StatusSucceeded, rec.Status)
				assert.Equal(t, 3, rec.Attempts)
				assert.Empty(t, rec.Error, "the last outcome replaces earlier reasons")
				assert.Equal(t, 3, modifyCalls(b.sandbox))
			})

			t.Run("busy beyond the attempt limit fails with the reason", func(t *testing.T) {
				t.Parallel()
				b := setup(t, be.Open, setupOpts{maxAttempts: 3})
				b.sandbox.SetFaults(appA, wechattest.Faults{BusyRate: 1})
				rec := b.enqueueWait(t, change(tasks.ActionAdd, false, "a.com"))
				assert.Equal(t, tasks.StatusFailed, rec.Status)
				assert.Equal(t, 3, rec.Attempts)
				assert.Equal(t, ptr(-1), rec.ErrCode)
				assert.Contains(t, rec.Error, "gave up after 3 attempts: WeChat is busy")
				assert.Equal(t, 3, modifyCalls(b.sandbox))
			})

			t.Run("partial: errcode 0 with unverified domains", func(t *testing.T) {
				t.Parallel()
				b := setup(t, be.Open, setupOpts{})
				b.sandbox.PutPlatform(wechattest.Platform{AppID: appA, Secret: "secret-" + appA, Released: true, Verified: []string{"good.com"}})
				rec := b.enqueueWait(t, change(tasks.ActionAdd, false, "good.com", "bad.com"))
				assert.Equal(t, tasks.StatusPartial, rec.Status)
				assert.Equal(t, []string{"bad.com"}, rec.InvalidDomains)
				assert.Equal(t, ptr([]string{"good.com"}), rec.TestingDomains)
				assert.Equal(t, ptr(0), rec.ErrCode)
				assert.Contains(t, rec.Error, "verification")
				assert.Equal(t, 1, rec.Attempts)
			})

			t.Run("never-released platform: no published list", func(t *testing.T) {
				t.Parallel()
				b := setup(t, be.Open, setupOpts{})
				b.sandbox.PutPlatform(wechattest.Platform{AppID: appA, Secret: "secret-" + appA})
				rec := b.enqueueWait(t, change(tasks.ActionAdd, false, "a.com"))
				assert.Equal(t, tasks.StatusSucceeded, rec.Status)
				assert.Nil(t, rec.PublishedDomains)
			})

			t.Run("a refused token is refreshed and the call made again at once", func(t *testing.T) {
				t.Parallel()
				b := setup(t, be.Open, setupOpts{})
				rec := b.enqueueWait(t, change(tasks.ActionGet, false))
				require.Equal(t, tasks.StatusSucceeded, rec.Status)
				require.Equal(t, 1, b.sandbox.TokenFetches(appA))

				b.sandbox.RevokeTokens()
				rec = b.enqueueWait(t, change(tasks.ActionAdd, false, "a.com"))
				assert.Equal(t, tasks.StatusSucceeded, rec.Status)
				assert.Equal(t, 1, rec.Attempts, "refresh and retry happen within one attempt")
				assert.Equal(t, 2, b.sandbox.TokenFetches(appA))
				assert.Equal(t, 3, modifyCalls(b.sandbox), "get, refused add, add")
			})

			t.Run("idempotent resubmission runs once", func(t *testing.T) {
				t.Parallel()
				b := setup(t, be.Open, setupOpts{})
				ctx := context.Background()
				first, err := b.client.Enqueue(ctx, change(tasks.ActionAdd, false, "a.com"), tasks.EnqueueOptions{IdempotencyKey: "release-7"})
				require.NoError(t, err)
				done, err := b.client.Wait(ctx, first.TaskID)
				require.NoError(t, err)
				require.Equal(t, tasks.StatusSucceeded, done.Status)

				again, err := b.client.Enqueue(ctx, change(tasks.ActionAdd, false, "a.com"), tasks.EnqueueOptions{IdempotencyKey: "release-7"})
				require.NoError(t, err)
				assert.Equal(t, first.TaskID, again.TaskID)
				assert.Equal(t, tasks.StatusSucceeded, again.Status)
				time.Sleep(300 * time.Millisecond) // a second run would have happened by now
				assert.Equal(t, 1, modifyCalls(b.sandbox))
			})
		})
	}
}

func TestPermanentErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		give     tasks.JumpDomainChange
		platform *wechattest.Platform
		script   []int
		wantCode int
		wantText string
	}{
		{
			name:     "61028 publish on an unreleased platform",
			give:     change(tasks.ActionAdd, true, "a.com"),
			platform: &wechattest.Platform{AppID: appA, Secret: "secret-" + appA},
			wantCode: 61028,
			wantText: "not released",
		},
		{
			name:     "65316 domain limit",
			give:     change(tasks.ActionAdd, false, "a.com"),
			script:   []int{65316},
			wantCode: 65316,
			wantText: "jump-domain limit",
		},
		{name: "9410016 invalid domains", give: change(tasks.ActionAdd, false, "a.com"), script: []int{9410016}, wantCode: 9410016, wantText: "invalid domain"},
		{name: "40052 invalid action", give: change(tasks.ActionAdd, false, "a.com"), script: []int{40052}, wantCode: 40052, wantText: "refused the action"},
		{name: "an errcode nobody listed", give: change(tasks.ActionAdd, false, "a.com"), script: []int{48001}, wantCode: 48001, wantText: "refused the change"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, redistest.Mini, setupOpts{})
			if tt.platform != nil {
				b.sandbox.PutPlatform(*tt.platform)
			}
			b.sandbox.SetFaults(appA, wechattest.Faults{Script: tt.script})
			rec := b.enqueueWait(t, tt.give)
			assert.Equal(t, tasks.StatusFailed, rec.Status)
			assert.Equal(t, 1, rec.Attempts, "not retried")
			assert.Equal(t, ptr(tt.wantCode), rec.ErrCode)
			assert.NotEmpty(t, rec.ErrMsg, "WeChat's errmsg is kept")
			assert.Contains(t, rec.Error, tt.wantText)
			assert.Nil(t, rec.TestingDomains)

			// The task is archived in asynq, where the UI shows it.
			// (asynq moves it just after the handler returned.)
			require.Eventually(t, func() bool {
				info, err := asynq.NewInspectorFromRedisClient(b.redis.Client).GetTaskInfo(b.redis.Queue, rec.TaskID)
				return err == nil && info.State == asynq.TaskStateArchived
			}, 5*time.Second, 10*time.Millisecond)
			assert.Equal(t, 1, modifyCalls(b.sandbox))
		})
	}
}

func TestCancel(t *testing.T) {
	t.Parallel()
	for _, be := range redistest.Backends() {
		t.Run(be.Name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()

			t.Run("a running change", func(t *testing.T) {
				t.Parallel()
				b := setup(t, be.Open, setupOpts{})
				b.sandbox.SetFaults(appA, wechattest.Faults{Latency: 3 * time.Second})
				rec, err := b.client.Enqueue(ctx, change(tasks.ActionAdd, false, "a.com"), tasks.EnqueueOptions{})
				require.NoError(t, err)
				require.Eventually(t, func() bool {
					r, err := b.client.Get(ctx, rec.TaskID)
					return err == nil && r.Status == tasks.StatusRunning
				}, 5*time.Second, 20*time.Millisecond)
				got, err := b.client.Cancel(ctx, rec.TaskID)
				require.NoError(t, err)
				assert.Equal(t, tasks.StatusCanceled, got.Status)
				assert.Contains(t, got.Error, "may or may not have taken effect")
				// It never runs again.
				time.Sleep(500 * time.Millisecond)
				final, err := b.client.Get(ctx, rec.TaskID)
				require.NoError(t, err)
				assert.Equal(t, tasks.StatusCanceled, final.Status)
				assert.Equal(t, 1, final.Attempts)
			})

			t.Run("a change waiting to be retried", func(t *testing.T) {
				t.Parallel()
				b := setup(t, be.Open, setupOpts{retryBase: 100 * time.Millisecond, maxAttempts: 50})
				b.sandbox.SetFaults(appA, wechattest.Faults{BusyRate: 1})
				rec, err := b.client.Enqueue(ctx, change(tasks.ActionAdd, false, "a.com"), tasks.EnqueueOptions{})
				require.NoError(t, err)
				require.Eventually(t, func() bool {
					r, err := b.client.Get(ctx, rec.TaskID)
					return err == nil && r.Attempts >= 1 && r.Status == tasks.StatusRetrying
				}, 5*time.Second, 5*time.Millisecond)
				got, err := b.client.Cancel(ctx, rec.TaskID)
				require.NoError(t, err)
				assert.Equal(t, tasks.StatusCanceled, got.Status)
				calls := modifyCalls(b.sandbox)
				time.Sleep(1500 * time.Millisecond) // retries come every 0-500ms
				assert.Equal(t, calls, modifyCalls(b.sandbox), "no call after the cancel")
			})
		})
	}
}

func TestAtLeastOnceRedeliveryDoesNotCallAgain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, redistest.Real, setupOpts{noWorker: true})
	rec, err := b.client.Enqueue(ctx, change(tasks.ActionAdd, false, "a.com"), tasks.EnqueueOptions{})
	require.NoError(t, err)
	// An earlier run finished the change, then died before acknowledging
	// the task: asynq delivers it again.
	_, err = b.store.Update(ctx, rec.TaskID, func(r *tasks.Record) error {
		r.Status, r.Attempts = tasks.StatusSucceeded, 1
		return nil
	})
	require.NoError(t, err)
	b.startWorker(t)
	require.Eventually(t, func() bool {
		q, err := asynq.NewInspectorFromRedisClient(b.redis.Client).GetQueueInfo(b.redis.Queue)
		return err == nil && q.Pending == 0 && q.Active == 0
	}, 5*time.Second, 20*time.Millisecond)
	assert.Equal(t, 0, modifyCalls(b.sandbox))
	got, err := b.client.Get(ctx, rec.TaskID)
	require.NoError(t, err)
	assert.Equal(t, 1, got.Attempts)
}

// TestAnImplausibleQueuedAtIsNotTrusted: a bare producer's payload naming
// a record time in the future does not date the record the worker writes.
func TestAnImplausibleQueuedAtIsNotTrusted(t *testing.T) {
	t.Parallel()
	b := setup(t, redistest.Mini, setupOpts{})
	payload := `{"platform":"` + appA + `","action":"add","domains":["a.com"],"queued_at":"2999-01-01T00:00:00Z"}`
	info, err := asynq.NewClientFromRedisClient(b.redis.Client).Enqueue(asynq.NewTask(tasks.TypeJumpDomain, []byte(payload)), asynq.Queue(b.redis.Queue))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.Eventually(t, func() bool {
		_, err := b.client.Get(ctx, info.ID)
		return err == nil
	}, 5*time.Second, 20*time.Millisecond)
	rec, err := b.client.Wait(ctx, info.ID)
	require.NoError(t, err)
	assert.Equal(t, tasks.StatusSucceeded, rec.Status)
	assert.WithinDuration(t, time.Now(), rec.CreatedAt, time.Minute, "dated now, not in 2999")
}

func TestTaskWithoutRecordGetsOne(t *testing.T) {
	t.Parallel()
	b := setup(t, redistest.Mini, setupOpts{})
	// A bare asynq producer: asynq names the task with a UUID.
	task, err := tasks.NewJumpDomainTask(change(tasks.ActionAdd, false, "a.com"), asynq.Queue(b.redis.Queue))
	require.NoError(t, err)
	info, err := asynq.NewClientFromRedisClient(b.redis.Client).Enqueue(task)
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.Eventually(t, func() bool {
		_, err := b.client.Get(ctx, info.ID)
		return err == nil
	}, 5*time.Second, 20*time.Millisecond)
	rec, err := b.client.Wait(ctx, info.ID)
	require.NoError(t, err)
	assert.Equal(t, tasks.StatusSucceeded, rec.Status)
}

// TestTasksNotInOurFormAreNotRun: a bare producer's task whose id or
// payload is not in the form wxdomain makes touches no key of ours and
// never reaches WeChat.
func TestTasksNotInOurFormAreNotRun(t *testing.T) {
	t.Parallel()
	b := setup(t, redistest.Mini, setupOpts{})
	ctx := context.Background()
	inspector := asynq.NewInspectorFromRedisClient(b.redis.Client)
	t.Cleanup(func() { _ = inspector.Close() })
	producer := asynq.NewClientFromRedisClient(b.redis.Client)
	t.Cleanup(func() { _ = producer.Close() })
	enqueue := func(id string, payload string) {
		_, err := producer.Enqueue(asynq.NewTask(tasks.TypeJumpDomain, []byte(payload)), asynq.Queue(b.redis.Queue), asynq.TaskID(id), asynq.MaxRetry(3))
		require.NoError(t, err)
	}
	good := `{"platform":"` + appA + `","action":"add","domains":["a.com"]}`
	enqueue("x:state", good)
	enqueue("0123456789abcdef0123456789abcde0", `{"platform":"_global","action":"get"}`)
	enqueue("0123456789abcdef0123456789abcde1", `{"platform":"`+appA+`","action":"add","domains":["a.com;evil.com"]}`)
	enqueue("0123456789abcdef0123456789abcde2", `{"platform":"`+appA+`","action":"get","rollout_id":"x:state"}`)
	require.Eventually(t, func() bool {
		q, err := inspector.GetQueueInfo(b.redis.Queue)
		return err == nil && q.Archived == 4
	}, 10*time.Second, 20*time.Millisecond, "each is archived, not retried")
	assert.Zero(t, modifyCalls(b.sandbox), "none reached WeChat")
	_, err := b.client.Store().Get(ctx, "x:state")
	assert.ErrorIs(t, err, tasks.ErrTaskNotFound, "no record under an id of a stranger's making")
	for _, id := range []string{"0123456789abcdef0123456789abcde0", "0123456789abcdef0123456789abcde1", "0123456789abcdef0123456789abcde2"} {
		rec, err := b.client.Get(ctx, id)
		require.NoError(t, err)
		assert.Equal(t, tasks.StatusFailed, rec.Status, id)
		assert.Contains(t, rec.Error, "not a valid change", id)
	}
	keys, err := b.redis.Client.Keys(ctx, b.redis.Prefix+"*_global*").Result()
	require.NoError(t, err)
	assert.Empty(t, keys)
	keys, err = b.redis.Client.Keys(ctx, b.redis.Prefix+"rollout:*").Result()
	require.NoError(t, err)
	assert.Empty(t, keys)
}

func TestGracefulShutdownFinishesInFlightChanges(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, redistest.Real, setupOpts{noWorker: true})
	stop := b.startWorker(t)
	b.sandbox.SetFaults(appA, wechattest.Faults{Latency: time.Second})
	rec, err := b.client.Enqueue(ctx, change(tasks.ActionAdd, false, "a.com"), tasks.EnqueueOptions{})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		r, err := b.client.Get(ctx, rec.TaskID)
		return err == nil && r.Status == tasks.StatusRunning
	}, 5*time.Second, 10*time.Millisecond)
	stop() // SIGTERM equivalent: shutdown timeout is 5s, the call takes 1s
	got, err := b.client.Get(ctx, rec.TaskID)
	require.NoError(t, err)
	assert.Equal(t, tasks.StatusSucceeded, got.Status)
}

func TestUpstreamTransportFaultsAreRetried(t *testing.T) {
	t.Parallel()
	b := setup(t, redistest.Mini, setupOpts{maxAttempts: 6})
	// The HTTP client times out at 5s in this setup, so the stall costs 5s.
	b.sandbox.SetFaults(appA, wechattest.Faults{Transport: []string{"reset", "502", "truncated", "stall"}})
	rec := b.enqueueWait(t, change(tasks.ActionAdd, false, "a.com"))
	assert.Equal(t, tasks.StatusSucceeded, rec.Status)
	assert.Equal(t, 5, rec.Attempts, "four faults, each retried, then success")
	p, _ := b.sandbox.Platform(appA)
	assert.Equal(t, []string{"a.com"}, p.Testing)
}

// TestRedirectingUpstreamIsNotFollowed: an upstream that answers 307 gets
// no second request anywhere: the secret, the ticket and the token never
// reach the redirect's target. The change is retried like on a 5xx, the
// token API's redirect too (it is not "busy").
func TestRedirectingUpstreamIsNotFollowed(t *testing.T) {
	t.Parallel()
	for _, api := range []string{"api_component_token", "modify_wxa_jump_domain"} {
		t.Run(api, func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			var received []string
			target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				body, _ := io.ReadAll(r.Body)
				mu.Lock()
				received = append(received, r.URL.String()+" "+r.Header.Get("Referer")+" "+string(body))
				mu.Unlock()
				w.WriteHeader(http.StatusOK)
			}))
			t.Cleanup(target.Close)
			b := setup(t, redistest.Mini, setupOpts{maxAttempts: 3, upstream: func(h http.Handler) http.Handler {
				return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					if strings.HasSuffix(r.URL.Path, api) {
						http.Redirect(w, r, target.URL+r.URL.RequestURI(), http.StatusTemporaryRedirect)
						return
					}
					h.ServeHTTP(w, r)
				})
			}})
			want := api + ": HTTP 307: redirect to host " + strings.TrimPrefix(target.URL, "http://") + " not followed"
			// A redirect does not pass by itself: the change uses its
			// attempts, as on a 5xx, then fails (the token API's too: it
			// is not waited out like a busy answer).
			rec := b.enqueueWait(t, change(tasks.ActionAdd, false, "a.com"))
			assert.Equal(t, tasks.StatusFailed, rec.Status)
			assert.Equal(t, 3, rec.Attempts, "retried like an upstream 5xx, then given up")
			assert.Contains(t, rec.Error, want)
			assert.NotContains(t, rec.Error, "access_token")
			mu.Lock()
			defer mu.Unlock()
			assert.Empty(t, received, "the redirect's target received nothing")
			for _, e := range b.logs.All() {
				assert.NotContains(t, fmt.Sprint(e.ContextMap()), "access_token", e.Message)
			}
		})
	}
}
