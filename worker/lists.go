package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/wxdomain/wxdomain/internal/limit"
	"github.com/wxdomain/wxdomain/internal/wechat"
)

// ListsFetcher reads platforms' current jump-domain lists (a get, which
// changes nothing) with the fleet's shared tokens, each call on a slot of
// the platform's rate limit (limiter may be nil; a slot further than
// maxWait away is a *SlotError, not a wait), a refused token dropped and
// the call made once more, as every call is. An ensure dry run reads the
// lists with it.
func ListsFetcher(tokens Tokens, up Upstream, limiter *limit.Limiter, rate func(string) limit.Rate, policy Policy, maxWait time.Duration) func(ctx context.Context, appid string) (wechat.JumpDomains, error) {
	if maxWait <= 0 {
		maxWait = time.Second
	}
	if rate == nil {
		rate = func(string) limit.Rate { return limit.Rate{} }
	}
	slot := func(ctx context.Context, appid string) error {
		if limiter == nil {
			return nil
		}
		res, err := limiter.Reserve(ctx, limit.Request{Platform: appid, Rate: rate(appid), MaxAhead: maxWait, Tolerance: slotTolerance})
		if err != nil {
			return err
		}
		if !res.OK || res.Wait > maxWait {
			return &SlotError{Platform: appid, Wait: res.Wait}
		}
		return sleepCtx(ctx, res.Wait)
	}
	call := func(ctx context.Context, appid, tok string) (wechat.JumpDomains, error) {
		if err := slot(ctx, appid); err != nil {
			return wechat.JumpDomains{}, err
		}
		return up.ModifyJumpDomain(ctx, tok, wechat.JumpDomainChange{Action: wechat.ActionGet})
	}
	return func(ctx context.Context, appid string) (wechat.JumpDomains, error) {
		tok, err := tokens.Token(ctx, appid)
		if err != nil {
			return wechat.JumpDomains{}, err
		}
		l, err := call(ctx, appid, tok)
		if policy.Classify(err).Kind == KindRefreshToken {
			if err := tokens.Invalidate(ctx, appid, tok); err != nil {
				return wechat.JumpDomains{}, err
			}
			if tok, err = tokens.Token(ctx, appid); err != nil {
				return wechat.JumpDomains{}, err
			}
			l, err = call(ctx, appid, tok)
		}
		if err != nil {
			return wechat.JumpDomains{}, fmt.Errorf("modify_wxa_jump_domain (get): %w", err)
		}
		return l, nil
	}
}

// ListsOf adapts a lists fetcher to what the rollout service reads
// lists with (rollout.Config.Lists).
func ListsOf(fetch func(ctx context.Context, appid string) (wechat.JumpDomains, error)) func(ctx context.Context, appid string) (testing, published []string, err error) {
	return func(ctx context.Context, appid string) ([]string, []string, error) {
		l, err := fetch(ctx, appid)
		return l.Testing, l.Published, err
	}
}
