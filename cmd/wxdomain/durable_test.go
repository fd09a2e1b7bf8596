package main

import (
	"encoding/json"
	"os/exec"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/redistest"
)

// TestEnqueueNotConfirmed: with a replica required and the replica frozen,
// `enqueue` keeps trying within --timeout, then exits non-zero saying the
// submission was not confirmed; run again with the same key once the
// replica is back, it prints the change, and there is one.
func TestEnqueueNotConfirmed(t *testing.T) {
	t.Parallel()
	p := redistest.StartPair(t)
	c := newCLI(t, p.Bundle, "platforms:\n  - {appid: wx0123456789abcdef, secret_env: S}\n", "S=s", "WXDOMAIN_REDIS_MIN_REPLICAS=1", "WXDOMAIN_REDIS_WAIT_TIMEOUT=100ms")
	args := []string{"enqueue", "--platform", "wx0123456789abcdef", "--action", "add", "--domains", "a.example.com", "--key", "order-1"}

	p.StopReplica()
	start := time.Now()
	_, stderr, err := c.run(append(args, "--timeout", "1s")...)
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, stderr)
	assert.NotZero(t, exit.ExitCode())
	assert.Contains(t, stderr, "not confirmed: 0 of 1 Redis replicas")
	assert.Contains(t, stderr, "trying again", "it retried within --timeout")
	assert.Less(t, time.Since(start), 10*time.Second)

	p.ContinueReplica()
	stdout, stderr, err := c.run(args...)
	require.NoError(t, err, stderr)
	var rec struct {
		TaskID string `json:"task_id"`
	}
	require.NoError(t, json.Unmarshal([]byte(stdout), &rec), stdout)
	assert.NotEmpty(t, rec.TaskID)
	stdout2, stderr, err := c.run(args...)
	require.NoError(t, err, stderr)
	assert.Contains(t, stdout2, rec.TaskID, "the same key is the same change")
}
