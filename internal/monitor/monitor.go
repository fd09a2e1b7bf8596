// Package monitor embeds the asynq web UI (asynqmon), showing wxdomain's
// changes and results readably.
package monitor

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/hibiken/asynq"
	"github.com/hibiken/asynqmon"
	"github.com/redis/go-redis/v9"

	"github.com/wxdomain/wxdomain/tasks"
)

// sharedRedis hands asynqmon the process's Redis connection, so that the UI
// works with every URL form wxdomain accepts (sentinels, TLS, ACL users).
type sharedRedis struct{ c redis.UniversalClient }

func (s sharedRedis) MakeRedisClient() interface{} { return s.c }

// New returns the UI rooted at path (e.g. "/monitoring").
func New(rdb redis.UniversalClient, path string) *asynqmon.HTTPHandler {
	return asynqmon.New(asynqmon.Options{
		RootPath:         path,
		RedisConnOpt:     sharedRedis{rdb},
		PayloadFormatter: asynqmon.PayloadFormatterFunc(FormatPayload),
		ResultFormatter:  asynqmon.ResultFormatterFunc(FormatResult),
	})
}

// FormatPayload shows a change as a sentence: "add www.a.com, m.a.com on wx123 (testing and published)".
func FormatPayload(taskType string, payload []byte) string {
	if taskType != tasks.TypeJumpDomain {
		return string(payload)
	}
	c, err := tasks.ParseJumpDomainChange(payload)
	if err != nil {
		return string(payload)
	}
	scope := "testing"
	if c.Publish {
		scope = "testing and published"
	}
	s := fmt.Sprintf("%s %s on %s (%s)", c.Action, strings.Join(c.Domains, ", "), c.Platform, scope)
	if c.Action == tasks.ActionGet {
		s = fmt.Sprintf("get on %s", c.Platform)
	}
	if c.RolloutID != "" {
		s += " [rollout " + c.RolloutID + "]"
	}
	return s
}

// FormatResult pretty-prints the result summary the worker writes.
func FormatResult(_ string, result []byte) string {
	var v any
	if err := json.Unmarshal(result, &v); err != nil {
		return string(result)
	}
	b, _ := json.MarshalIndent(v, "", "  ")
	return string(b)
}

var _ asynq.RedisConnOpt = sharedRedis{}
