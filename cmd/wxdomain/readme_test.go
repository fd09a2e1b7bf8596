package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/redistest"
)

// TestReadmeWalkthrough runs the README's three-terminal walkthrough as
// written, each terminal's block in a shell of its own from the
// repository's root, so that the README cannot drift from what works.
// Two things are changed, and only these: the Redis URL (the test's own
// Redis database, with a key prefix and queues of its own, set in the
// environment the shells start with) and the sandbox's port (a free one,
// so that tests can run side by side).
func TestReadmeWalkthrough(t *testing.T) {
	t.Parallel()
	rb := redistest.Real(t)
	root, err := filepath.Abs("../..")
	require.NoError(t, err)
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	require.NoError(t, err)
	blocks := walkthroughBlocks(t, string(readme))
	require.Len(t, blocks, 3, "three terminals")

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	port := ln.Addr().(*net.TCPAddr).Port
	require.NoError(t, ln.Close())
	swap := strings.NewReplacer("redis://127.0.0.1:6379/0", rb.URL, "127.0.0.1:9090", fmt.Sprintf("127.0.0.1:%d", port))

	env := []string{"WXDOMAIN_KEY_PREFIX=" + rb.Prefix, "WXDOMAIN_QUEUE=" + rb.Queue, "WXDOMAIN_BULK_QUEUE=" + rb.Queue + "_bulk"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "WXDOMAIN_") {
			env = append(env, kv)
		}
	}
	shell := func(block string) *proc {
		p := &proc{cmd: exec.Command("bash", "-euc", swap.Replace(block))}
		p.cmd.Dir, p.cmd.Env = root, env
		p.cmd.Stdout, p.cmd.Stderr = p, p
		p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		require.NoError(t, p.cmd.Start())
		t.Cleanup(func() {
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
			_ = p.cmd.Wait()
		})
		return p
	}
	waitLong := func(p *proc, re *regexp.Regexp) {
		t.Helper()
		require.Eventually(t, func() bool { return re.MatchString(p.output()) || p.cmd.ProcessState != nil }, 3*time.Minute, 50*time.Millisecond)
		require.Regexp(t, re, p.output())
	}

	fake := shell(blocks[0]) // builds ./wxdomain, then serves the sandbox
	waitLong(fake, regexp.MustCompile(`listening on http://127\.0\.0\.1:\d+`))
	worker := shell(blocks[1])
	waitLong(worker, regexp.MustCompile(`worker started`))

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	you := exec.CommandContext(ctx, "bash", "-euc", swap.Replace(blocks[2]))
	you.Dir, you.Env = root, env
	out, err := you.CombinedOutput()
	require.NoError(t, err, "terminal 3 as written:\n%s\n%s", blocks[2], out)
	assert.Contains(t, string(out), `"status": "succeeded"`)
	assert.Contains(t, string(out), `"www.example.com"`)
}

// walkthroughBlocks returns the shell blocks between the README's
// walkthrough markers, in order.
func walkthroughBlocks(t *testing.T, readme string) []string {
	t.Helper()
	start := strings.Index(readme, "<!-- walkthrough")
	end := strings.Index(readme, "<!-- /walkthrough -->")
	require.True(t, start >= 0 && end > start, "the README marks its walkthrough")
	var out []string
	for _, m := range regexp.MustCompile("(?s)\\*\\*Terminal \\d\\*\\*.*?```sh\n(.*?)```").FindAllStringSubmatch(readme[start:end], -1) {
		out = append(out, m[1])
	}
	return out
}
