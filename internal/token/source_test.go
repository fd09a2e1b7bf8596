package token_test

import (
	"context"
	"github.com/wxdomain/wxdomain/internal/ticket"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/token"
	"github.com/wxdomain/wxdomain/internal/wechat"
	"github.com/wxdomain/wxdomain/internal/wechattest"
)

const app = "wxaaaaaaaaaaaaaaaa"

type tokenBundle struct {
	redis   redistest.Bundle
	sandbox *wechattest.Sandbox
	wc      *wechat.Client
	tickets *ticket.Store
}

func setup(t testing.TB, open func(testing.TB) redistest.Bundle) *tokenBundle {
	t.Helper()
	rb := open(t)
	sb := wechattest.New(wechattest.Config{})
	sb.PutPlatform(wechattest.Platform{AppID: app, Secret: "s", Released: true})
	sb.SetLatency(30 * time.Millisecond) // widen the race window
	srv := httptest.NewServer(sb.Handler())
	t.Cleanup(srv.Close)
	wc, err := wechat.New(srv.URL, nil)
	require.NoError(t, err)
	tickets := ticket.NewStore(rb.Client, rb.Prefix)
	require.NoError(t, tickets.Set(context.Background(), app, "ticket"))
	return &tokenBundle{redis: rb, sandbox: sb, wc: wc, tickets: tickets}
}

// source is one process's token source.
func (b *tokenBundle) source(t testing.TB, f token.Fetcher) *token.Source {
	if f == nil {
		f = b.wc
	}
	return token.NewSource(b.redis.Client, f, b.tickets, token.SourceConfig{
		Prefix: b.redis.Prefix, Margin: time.Minute, Lease: 2 * time.Second,
		Secret: func(appid string) (string, bool) { return "s", appid == app },
	}, logger(t))
}

func logger(t testing.TB) *zap.Logger {
	if _, bench := t.(*testing.B); bench {
		return zap.NewNop()
	}
	return zaptest.NewLogger(t)
}

func TestOneFetchForManyCallers(t *testing.T) {
	t.Parallel()
	for _, be := range redistest.Backends() {
		t.Run(be.Name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, be.Open)
			// Four "processes" (sources with their own singleflight) × 10 goroutines.
			var wg sync.WaitGroup
			tokens := make(chan string, 40)
			for p := 0; p < 4; p++ {
				src := b.source(t, nil)
				for g := 0; g < 10; g++ {
					wg.Add(1)
					go func() {
						defer wg.Done()
						tok, err := src.Token(context.Background(), app)
						assert.NoError(t, err)
						tokens <- tok
					}()
				}
			}
			wg.Wait()
			close(tokens)
			seen := map[string]bool{}
			for tok := range tokens {
				seen[tok] = true
			}
			assert.Len(t, seen, 1, "everyone got the same token")
			assert.Equal(t, 1, b.sandbox.TokenFetches(app))
		})
	}
}

func TestInvalidateOnlyTheTokenThatFailed(t *testing.T) {
	t.Parallel()
	for _, be := range redistest.Backends() {
		t.Run(be.Name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			b := setup(t, be.Open)
			w1, w2 := b.source(t, nil), b.source(t, nil)
			stale, err := w1.Token(ctx, app)
			require.NoError(t, err)

			// Worker 2 finds the token refused, drops it and fetches anew.
			require.NoError(t, w2.Invalidate(ctx, app, stale))
			fresh, err := w2.Token(ctx, app)
			require.NoError(t, err)
			require.NotEqual(t, stale, fresh)

			// Worker 1, late, reports the same stale token: the fresh one stays.
			require.NoError(t, w1.Invalidate(ctx, app, stale))
			got, err := w1.Token(ctx, app)
			require.NoError(t, err)
			assert.Equal(t, fresh, got)
			assert.Equal(t, 2, b.sandbox.TokenFetches(app))
		})
	}
}

func TestCrashedLockHolderDelaysOthersAtMostTheLease(t *testing.T) {
	t.Parallel()
	b := setup(t, redistest.Real)
	ctx := context.Background()
	// A process took the refresh lock and died: the lock stays until its
	// lease (2s here) runs out.
	require.NoError(t, b.redis.Client.Set(ctx, b.redis.Prefix+"token_lock:"+app, "dead-process", 2*time.Second).Err())

	start := time.Now()
	tok, err := b.source(t, nil).Token(ctx, app)
	require.NoError(t, err)
	assert.NotEmpty(t, tok)
	waited := time.Since(start)
	assert.Greater(t, waited, 1500*time.Millisecond, "the live lock was respected")
	assert.Less(t, waited, 3*time.Second, "waited at most about the lease")
	assert.Equal(t, 1, b.sandbox.TokenFetches(app))
}

func TestCallerGivingUpDoesNotFailTheOthers(t *testing.T) {
	t.Parallel()
	b := setup(t, redistest.Mini)
	b.sandbox.SetLatency(300 * time.Millisecond)
	src := b.source(t, nil)
	impatient, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	errs := make(chan error, 1)
	go func() {
		_, err := src.Token(impatient, app)
		errs <- err
	}()
	time.Sleep(10 * time.Millisecond) // the impatient caller leads the refresh
	tok, err := src.Token(context.Background(), app)
	require.NoError(t, err)
	assert.NotEmpty(t, tok)
	require.ErrorIs(t, <-errs, context.DeadlineExceeded)
}

func TestFetchErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	b := setup(t, redistest.Mini)
	src := b.source(t, nil)

	_, err := src.Token(ctx, "wxother")
	require.ErrorIs(t, err, token.ErrUnknownPlatform)

	require.NoError(t, b.redis.Client.Del(ctx, b.redis.Prefix+"ticket:"+app).Err())
	_, err = src.Token(ctx, app)
	require.ErrorIs(t, err, ticket.ErrNoTicket)
	var fe *token.FetchError
	require.ErrorAs(t, err, &fe)

	require.NoError(t, b.tickets.Set(ctx, app, "t2"))
	b.sandbox.SetFaults(app, wechattest.Faults{TokenErrCode: 61005})
	_, err = src.Token(ctx, app)
	var apiErr *wechat.APIError
	require.ErrorAs(t, err, &apiErr)
	assert.Equal(t, 61005, apiErr.Code)
	require.ErrorAs(t, err, &fe)
	assert.NotContains(t, err.Error(), "t2", "the ticket is not in the error")

	tk, err := b.tickets.Get(ctx, app)
	require.NoError(t, err)
	assert.Equal(t, "t2", tk.Value)
	assert.WithinDuration(t, time.Now(), tk.ReceivedAt, 5*time.Second)
}

// watching starts a source's change feed and waits until it is live.
func watching(t testing.TB, b *tokenBundle, src *token.Source) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		src.Watch(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	// The feed is live once a change published now reaches it; a token
	// read before that is simply not kept.
	require.Eventually(t, func() bool {
		n, err := b.redis.Client.PubSubNumSub(ctx, b.redis.Prefix+"token_changes").Result()
		return err == nil && n[b.redis.Prefix+"token_changes"] > 0
	}, 5*time.Second, 5*time.Millisecond)
}

func TestMemoryCacheFollowsFleetChanges(t *testing.T) {
	t.Parallel()
	for _, be := range redistest.Backends() {
		t.Run(be.Name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			b := setup(t, be.Open)
			w1, w2 := b.source(t, nil), b.source(t, nil)
			watching(t, b, w1)
			watching(t, b, w2)
			first, err := w1.Token(ctx, app)
			require.NoError(t, err)
			// Worker 2 finds it refused and replaces it.
			require.NoError(t, w2.Invalidate(ctx, app, first))
			second, err := w2.Token(ctx, app)
			require.NoError(t, err)
			require.NotEqual(t, first, second)
			// Worker 1 kept the first in memory, but hears of the change.
			require.Eventually(t, func() bool {
				got, err := w1.Token(ctx, app)
				return err == nil && got == second
			}, 5*time.Second, 10*time.Millisecond)
			assert.Equal(t, 2, b.sandbox.TokenFetches(app))

			st, err := w1.Status(ctx, app)
			require.NoError(t, err)
			assert.True(t, st.Valid)
			assert.Equal(t, int64(2), st.FetchesToday)
			assert.GreaterOrEqual(t, st.Generation, int64(2))
		})
	}
}

// countingHook counts the commands a Redis client sends.
type countingHook struct{ n atomic.Int64 }

func (h *countingHook) hook() redistest.Seen { return func(redis.Cmder) { h.n.Add(1) } }

func TestHotPathSkipsRedis(t *testing.T) {
	t.Parallel()
	b := setup(t, redistest.Mini)
	hook := &countingHook{}
	b.redis.Client.AddHook(hook.hook())
	src := b.source(t, nil)
	watching(t, b, src)
	ctx := context.Background()
	first, err := src.Token(ctx, app)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		before := hook.n.Load()
		tok, err := src.Token(ctx, app)
		return err == nil && tok == first && hook.n.Load() == before
	}, 5*time.Second, 10*time.Millisecond, "once kept in memory, a lookup sends no command")
	before := hook.n.Load()
	for i := 0; i < 100; i++ {
		_, err := src.Token(ctx, app)
		require.NoError(t, err)
	}
	assert.Equal(t, before, hook.n.Load())
}

// BenchmarkTokenHotPath measures Token when nothing changed: with the
// change feed live it must not touch Redis (redis_cmds/op = 0); without it,
// one read per call.
func BenchmarkTokenHotPath(b *testing.B) {
	for _, watch := range []bool{true, false} {
		name := map[bool]string{true: "watched", false: "unwatched"}[watch]
		b.Run(name, func(b *testing.B) {
			tb := setup(b, redistest.Mini)
			hook := &countingHook{}
			tb.redis.Client.AddHook(hook.hook())
			src := tb.source(b, nil)
			if watch {
				watching(b, tb, src)
			}
			ctx := context.Background()
			_, err := src.Token(ctx, app)
			require.NoError(b, err)
			_, _ = src.Token(ctx, app) // now kept in memory
			before := hook.n.Load()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := src.Token(ctx, app); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(hook.n.Load()-before)/float64(b.N), "redis_cmds/op")
		})
	}
}

// TestCanceledLeaderKeepsTheIssuedToken: the caller that led a refresh
// gives up (its change canceled, its worker stopping) while WeChat issues
// the token; the token is stored anyway and nobody fetches another.
func TestCanceledLeaderKeepsTheIssuedToken(t *testing.T) {
	t.Parallel()
	b := setup(t, redistest.Real)
	b.sandbox.SetLatency(300 * time.Millisecond)
	src := b.source(t, nil)
	impatient, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := src.Token(impatient, app)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	src.Drain() // the refresh goes on without its caller
	tok, err := b.source(t, nil).Token(context.Background(), app)
	require.NoError(t, err)
	assert.NotEmpty(t, tok)
	assert.Equal(t, 1, b.sandbox.TokenFetches(app), "the token issued for the impatient caller was kept")
}

// TestDrainDoesNotWaitForAnotherProcess: a stopping process whose refresh
// only waits for another process's lock stops at once; it does not sit
// out the other's lease.
func TestDrainDoesNotWaitForAnotherProcess(t *testing.T) {
	t.Parallel()
	b := setup(t, redistest.Real)
	ctx := context.Background()
	require.NoError(t, b.redis.Client.Set(ctx, b.redis.Prefix+"token_lock:"+app, "another-process", 30*time.Second).Err())
	src := b.source(t, nil)
	impatient, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err := src.Token(impatient, app)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	done := make(chan struct{})
	go func() {
		src.Drain()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("Drain waited for another process's lock (its lease is 30s; the refresh's bound 4s)")
	}
	assert.Zero(t, b.sandbox.TokenFetches(app))
}
