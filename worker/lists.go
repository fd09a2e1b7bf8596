package worker

import (
	"context"
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
	return fleetCall(tokens, limiter, rate, policy, maxWait, "modify_wxa_jump_domain (get)", func(ctx context.Context, tok string) (wechat.JumpDomains, error) {
		return up.ModifyJumpDomain(ctx, tok, wechat.JumpDomainChange{Action: wechat.ActionGet})
	})
}

// ListsOf adapts a lists fetcher to what the rollout service reads
// lists with (rollout.Config.Lists).
func ListsOf(fetch func(ctx context.Context, appid string) (wechat.JumpDomains, error)) func(ctx context.Context, appid string) (testing, published []string, err error) {
	return func(ctx context.Context, appid string) ([]string, []string, error) {
		l, err := fetch(ctx, appid)
		return l.Testing, l.Published, err
	}
}
