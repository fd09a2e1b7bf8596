package redistest

import (
	"context"

	"github.com/redis/go-redis/v9"
)

// Seen is a go-redis hook that shows fn every command a client sends,
// after its reply (a pipeline's commands one by one), for tests that
// count what reaches Redis.
type Seen func(redis.Cmder)

// DialHook implements redis.Hook.
func (Seen) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook implements redis.Hook.
func (fn Seen) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		fn(cmd)
		return err
	}
}

// ProcessPipelineHook implements redis.Hook.
func (fn Seen) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, c := range cmds {
			fn(c)
		}
		return err
	}
}

// Handshake reports whether a command is a new connection's handshake
// (HELLO, CLIENT SETINFO, SELECT, AUTH), sent once per connection.
func Handshake(cmd redis.Cmder) bool {
	switch cmd.Name() {
	case "hello", "client", "select", "auth":
		return true
	}
	return false
}
