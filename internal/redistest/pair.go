package redistest

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Pair is a primary redis-server with one replica, both this test's own
// processes, for tests of durable acknowledgement.
type Pair struct {
	Bundle
	replica *exec.Cmd
}

// StartPair starts a primary and a replica (redis-server from PATH) on free
// ports and waits until the replica is in sync. Without redis-server the
// test skips, or fails when a real Redis is required.
func StartPair(t testing.TB) *Pair {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv(EnvRequire) == "1" || os.Getenv("CI") == "true" {
			t.Fatalf("redis-server required: %v", err)
		}
		t.Skipf("redis-server not found: %v", err)
	}
	dir := t.TempDir()
	start := func(port int, extra ...string) *exec.Cmd {
		args := append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir,
			"--dbfilename", "dump" + strconv.Itoa(port) + ".rdb"}, extra...)
		cmd := exec.Command(bin, args...)
		if err := cmd.Start(); err != nil {
			t.Fatalf("start redis-server: %v", err)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Signal(syscall.SIGCONT)
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		})
		return cmd
	}
	pport, rport := pairPort(t), pairPort(t)
	start(pport, "--repl-diskless-sync-delay", "0")
	replica := start(rport, "--replicaof", "127.0.0.1", strconv.Itoa(pport))
	c := redis.NewClient(&redis.Options{Addr: fmt.Sprintf("127.0.0.1:%d", pport)})
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// In sync once the replica acknowledges writes (it does not for a
	// moment after its first sync, although "online").
	for ok := 0; ok < 3; {
		var wait *redis.Cmd
		_, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
			p.Set(ctx, "redistest:pair", ok, time.Minute)
			wait = p.Do(ctx, "WAIT", 1, 100)
			return nil
		})
		if n, _ := wait.Int(); err == nil && n == 1 {
			ok++
			continue
		}
		ok = 0
		if ctx.Err() != nil {
			t.Fatalf("the replica did not come in sync: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	id := randomID()
	return &Pair{
		Bundle:  Bundle{Client: c, URL: fmt.Sprintf("redis://127.0.0.1:%d/0", pport), Prefix: "wxdt:" + id + ":", Queue: "wxdt_" + id},
		replica: replica,
	}
}

// StopReplica freezes the replica (SIGSTOP): it takes no more writes.
func (p *Pair) StopReplica() { _ = p.replica.Process.Signal(syscall.SIGSTOP) }

// ContinueReplica lets a frozen replica go on.
func (p *Pair) ContinueReplica() { _ = p.replica.Process.Signal(syscall.SIGCONT) }

func pairPort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
