package worker

import (
	"context"
	"fmt"
	"time"

	"github.com/wxdomain/wxdomain/internal/limit"
)

// fleetCall makes calls of WeChat outside a change (a platform's
// verification file, its lists for a dry run) as every call is made: with
// the fleet's shared token, each on a slot of the platform's rate limit
// (limiter may be nil; a slot further than maxWait away is a *SlotError,
// not a wait), a refused token dropped and the call made once more. name
// prefixes its errors.
func fleetCall[T any](tokens Tokens, limiter *limit.Limiter, rate func(string) limit.Rate, policy Policy, maxWait time.Duration, name string,
	do func(ctx context.Context, tok string) (T, error)) func(ctx context.Context, appid string) (T, error) {
	if maxWait <= 0 {
		maxWait = time.Second
	}
	if rate == nil {
		rate = func(string) limit.Rate { return limit.Rate{} }
	}
	call := func(ctx context.Context, appid, tok string) (T, error) {
		var zero T
		if limiter != nil {
			res, err := limiter.Reserve(ctx, limit.Request{Platform: appid, Rate: rate(appid), MaxAhead: maxWait, Tolerance: slotTolerance})
			if err != nil {
				return zero, err
			}
			if !res.OK || res.Wait > maxWait {
				return zero, &SlotError{Platform: appid, Wait: res.Wait}
			}
			if err := sleepCtx(ctx, res.Wait); err != nil {
				return zero, err
			}
		}
		return do(ctx, tok)
	}
	return func(ctx context.Context, appid string) (T, error) {
		var zero T
		tok, err := tokens.Token(ctx, appid)
		if err != nil {
			return zero, err
		}
		v, err := call(ctx, appid, tok)
		if policy.Classify(err).Kind == KindRefreshToken {
			if err := tokens.Invalidate(ctx, appid, tok); err != nil {
				return zero, err
			}
			if tok, err = tokens.Token(ctx, appid); err != nil {
				return zero, err
			}
			v, err = call(ctx, appid, tok)
		}
		if err != nil {
			return zero, fmt.Errorf("%s: %w", name, err)
		}
		return v, nil
	}
}
