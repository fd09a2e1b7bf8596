package redistest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// SentinelMaster is the master name a SentinelGroup's sentinels monitor.
const SentinelMaster = "wxmaster"

// ErrNoSentinel: redis-server or redis-sentinel is not on the PATH
// (Debian: apt-get install redis-server redis-sentinel).
var ErrNoSentinel = errors.New("redis-server and redis-sentinel are needed on the PATH (Debian packages redis-server, redis-sentinel)")

// SentinelURLForm is one of the two ways WXDOMAIN_REDIS_URL names sentinels.
type SentinelURLForm int

const (
	// MasterNameForm is go-redis's: redis://s1/0?master_name=NAME&addr=s2&addr=s3.
	MasterNameForm SentinelURLForm = iota
	// SentinelSchemeForm is asynq's: redis-sentinel://s1,s2,s3/0?master=NAME.
	SentinelSchemeForm
)

func (f SentinelURLForm) String() string {
	if f == SentinelSchemeForm {
		return "redis-sentinel://"
	}
	return "redis://?master_name="
}

// SentinelGroup is a Redis as production runs it, in real processes on
// free ports of 127.0.0.1: a primary, one replica, and three sentinels
// monitoring SentinelMaster with a quorum of 2. Nothing is persisted; the
// group lives in its own directory.
//
// Its sentinels judge a primary down after 1s without an answer, so a
// killed primary is replaced in about 2s.
type SentinelGroup struct {
	dir       string
	nodes     []*redisProc // data nodes; nodes[0] starts as the primary
	sentinels []*redisProc

	mu      sync.Mutex
	primary string
}

// Switch is what one change of primary took.
type Switch struct {
	Old, New string
	// Promoted: from the trigger until every sentinel names New and New
	// answers as a primary.
	Promoted time.Duration
	// Settled: until Old is New's replica again with its link up (a
	// graceful failover only).
	Settled time.Duration
}

type redisProc struct {
	name string
	port int
	conf string
	log  string
	args []string

	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

func (p *redisProc) addr() string { return "127.0.0.1:" + strconv.Itoa(p.port) }

func (p *redisProc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *redisProc) kill() {
	if p.cmd == nil || p.exited() {
		return
	}
	_ = p.cmd.Process.Kill()
	<-p.done
}

// logTail is the end of the process's log, for error messages.
func (p *redisProc) logTail() string {
	b, _ := os.ReadFile(p.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > 8 {
		lines = lines[len(lines)-8:]
	}
	return p.name + " log:\n  " + strings.Join(lines, "\n  ")
}

// StartSentinelGroup starts a group for the test and stops it when the test
// ends. Without the binaries it skips, or fails when real Redis is required
// (EnvRequire=1 or CI=true).
func StartSentinelGroup(t testing.TB) *SentinelGroup {
	t.Helper()
	dir, err := os.MkdirTemp("", "wxsentinel-")
	if err != nil {
		t.Fatal(err)
	}
	g, err := NewSentinelGroup(dir)
	if err != nil {
		_ = os.RemoveAll(dir)
		if errors.Is(err, ErrNoSentinel) && os.Getenv(EnvRequire) != "1" && os.Getenv("CI") != "true" {
			t.Skip(err)
		}
		t.Fatalf("sentinel group: %v", err)
	}
	t.Cleanup(func() { _ = g.Close() })
	return g
}

// NewSentinelGroup starts a group in dir, which Close removes, and returns
// once the replica is in sync and every sentinel knows the replica and the
// other two sentinels. It is the form for programs; tests use
// StartSentinelGroup.
func NewSentinelGroup(dir string) (*SentinelGroup, error) {
	for _, bin := range []string{"redis-server", "redis-sentinel"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("%w: %s not found", ErrNoSentinel, bin)
		}
	}
	g := &SentinelGroup{dir: dir}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := g.start(ctx); err != nil {
		_ = g.Close()
		return nil, err
	}
	return g, nil
}

func (g *SentinelGroup) start(ctx context.Context) error {
	primary, err := g.startNode(ctx, &redisProc{name: "redis-a"}, "")
	if err != nil {
		return err
	}
	g.nodes = append(g.nodes, primary)
	g.primary = primary.addr()
	replica, err := g.startNode(ctx, &redisProc{name: "redis-b"}, primary.addr())
	if err != nil {
		return err
	}
	g.nodes = append(g.nodes, replica)
	if err := g.waitReplicaInSync(ctx, replica.addr(), primary.addr()); err != nil {
		return err
	}
	for i := 0; i < 3; i++ {
		s, err := g.startSentinel(ctx, fmt.Sprintf("sentinel-%d", i+1), primary.port)
		if err != nil {
			return err
		}
		g.sentinels = append(g.sentinels, s)
	}
	// Sentinels find each other through hello messages on the primary,
	// every 2s; a failover needs them to know each other and the replica.
	return g.poll(ctx, "sentinels to know each other and the replica", func(ctx context.Context) error {
		for _, s := range g.sentinels {
			var m map[string]string
			err := onSentinel(s, func(c *redis.SentinelClient) (err error) {
				m, err = c.Master(ctx, SentinelMaster).Result()
				return err
			})
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			if m["num-other-sentinels"] != "2" || m["num-slaves"] != "1" {
				return fmt.Errorf("%s sees %s other sentinels and %s replicas", s.name, m["num-other-sentinels"], m["num-slaves"])
			}
		}
		return nil
	})
}

// startNode starts a data node, a replica of replicaOf when it is set, on
// a free port (a new one when the port was taken meanwhile) or on p.port
// when it has one.
func (g *SentinelGroup) startNode(ctx context.Context, p *redisProc, replicaOf string) (*redisProc, error) {
	fixed := p.port != 0
	var lastErr error
	for try := 0; try < 5; try++ {
		if !fixed {
			port, err := freePort()
			if err != nil {
				return nil, err
			}
			p.port = port
		}
		p.conf = filepath.Join(g.dir, p.name+".conf")
		p.log = filepath.Join(g.dir, p.name+".log")
		// A config file, so that the CONFIG REWRITE sentinels send with
		// REPLICAOF succeeds.
		conf := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\nsave \"\"\nappendonly no\n"+
			"repl-diskless-sync yes\nrepl-diskless-sync-delay 0\n", p.port, g.dir)
		if err := os.WriteFile(p.conf, []byte(conf), 0o600); err != nil {
			return nil, err
		}
		p.args = []string{p.conf}
		if replicaOf != "" {
			host, port, _ := net.SplitHostPort(replicaOf)
			p.args = append(p.args, "--replicaof", host, port)
		}
		lastErr = g.run(ctx, "redis-server", p)
		if lastErr == nil || fixed || !strings.Contains(p.logTail(), "in use") {
			break
		}
	}
	if lastErr != nil {
		return nil, lastErr
	}
	return p, nil
}

func (g *SentinelGroup) startSentinel(ctx context.Context, name string, primaryPort int) (*redisProc, error) {
	p := &redisProc{name: name}
	var lastErr error
	for try := 0; try < 5; try++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		p.port = port
		p.conf = filepath.Join(g.dir, name+".conf")
		p.log = filepath.Join(g.dir, name+".log")
		// Sentinels rewrite their config file: it must be writable.
		conf := fmt.Sprintf("port %d\nbind 127.0.0.1\ndir %s\n"+
			"sentinel monitor %s 127.0.0.1 %d 2\n"+
			"sentinel down-after-milliseconds %[3]s 1000\n"+
			"sentinel failover-timeout %[3]s 5000\n"+
			"sentinel parallel-syncs %[3]s 1\n", p.port, g.dir, SentinelMaster, primaryPort)
		if err := os.WriteFile(p.conf, []byte(conf), 0o600); err != nil {
			return nil, err
		}
		p.args = []string{p.conf}
		lastErr = g.run(ctx, "redis-sentinel", p)
		if lastErr == nil || !strings.Contains(p.logTail(), "in use") {
			break
		}
	}
	if lastErr != nil {
		return nil, lastErr
	}
	return p, nil
}

// run starts the process and waits until it answers PING.
func (g *SentinelGroup) run(ctx context.Context, bin string, p *redisProc) error {
	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	p.cmd = exec.Command(bin, p.args...)
	p.cmd.Dir = g.dir
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.done = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) {
		_ = cmd.Wait()
		close(done)
	}(p.cmd, p.done)
	c := redis.NewClient(&redis.Options{Addr: p.addr(), MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer c.Close()
	for {
		if c.Ping(ctx).Err() == nil {
			return nil
		}
		if p.exited() {
			return fmt.Errorf("%s exited at start\n%s", p.name, p.logTail())
		}
		select {
		case <-ctx.Done():
			p.kill()
			return fmt.Errorf("%s did not answer at %s\n%s", p.name, p.addr(), p.logTail())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// URL is WXDOMAIN_REDIS_URL naming the group's sentinels in one of the forms.
func (g *SentinelGroup) URL(form SentinelURLForm) string {
	addrs := g.SentinelAddrs()
	if form == SentinelSchemeForm {
		return "redis-sentinel://" + strings.Join(addrs, ",") + "/0?master=" + SentinelMaster
	}
	u := "redis://" + addrs[0] + "/0?master_name=" + SentinelMaster
	for _, a := range addrs[1:] {
		u += "&addr=" + a
	}
	return u
}

// Dir is the group's directory: config files and a log per process.
func (g *SentinelGroup) Dir() string { return g.dir }

// SentinelAddrs are the sentinels' host:port.
func (g *SentinelGroup) SentinelAddrs() []string {
	out := make([]string, len(g.sentinels))
	for i, s := range g.sentinels {
		out[i] = s.addr()
	}
	return out
}

// Primary is the current primary's host:port.
func (g *SentinelGroup) Primary() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.primary
}

// Client is a client that follows the primary through the sentinels, as
// wxdomain's own does. The caller closes it.
func (g *SentinelGroup) Client() *redis.Client {
	return redis.NewFailoverClient(&redis.FailoverOptions{MasterName: SentinelMaster, SentinelAddrs: g.SentinelAddrs()})
}

// Failover asks a sentinel for a graceful failover (SENTINEL FAILOVER) and
// returns once every sentinel names the new primary and the old one is its
// replica again, in sync.
func (g *SentinelGroup) Failover(ctx context.Context) (Switch, error) {
	old := g.Primary()
	start := time.Now()
	err := g.poll(ctx, "a sentinel to accept SENTINEL FAILOVER", func(ctx context.Context) error {
		// NOGOODSLAVE or INPROG right after a start or another failover.
		return onSentinel(g.sentinels[0], func(c *redis.SentinelClient) error {
			return c.Failover(ctx, SentinelMaster).Err()
		})
	})
	if err != nil {
		return Switch{Old: old}, err
	}
	sw, err := g.awaitPromotion(ctx, old, start)
	if err != nil {
		return sw, err
	}
	err = g.waitReplicaInSync(ctx, old, sw.New)
	sw.Settled = time.Since(start)
	return sw, err
}

// KillPrimary SIGKILLs the primary and returns once the sentinels have
// promoted the replica. The group then has no replica until RestartNode.
func (g *SentinelGroup) KillPrimary(ctx context.Context) (Switch, error) {
	old := g.Primary()
	p := g.node(old)
	if p == nil {
		return Switch{Old: old}, fmt.Errorf("no data node at %s", old)
	}
	start := time.Now()
	p.kill()
	return g.awaitPromotion(ctx, old, start)
}

// RestartNode starts a killed data node again on its port, as a replica of
// the current primary (what sentinels would make of it anyway; it has lost
// its data, so it must not come back as a primary), and returns once it is
// in sync.
func (g *SentinelGroup) RestartNode(ctx context.Context, addr string) error {
	p := g.node(addr)
	switch {
	case p == nil:
		return fmt.Errorf("no data node at %s", addr)
	case !p.exited():
		return fmt.Errorf("%s at %s is running", p.name, addr)
	}
	primary := g.Primary()
	if _, err := g.startNode(ctx, p, primary); err != nil {
		return err
	}
	return g.waitReplicaInSync(ctx, addr, primary)
}

// awaitPromotion waits until every sentinel names a primary other than old
// and that primary answers as one.
func (g *SentinelGroup) awaitPromotion(ctx context.Context, old string, start time.Time) (Switch, error) {
	sw := Switch{Old: old}
	err := g.poll(ctx, "every sentinel to name a new primary", func(ctx context.Context) error {
		var named string
		for _, s := range g.sentinels {
			var a []string
			err := onSentinel(s, func(c *redis.SentinelClient) (err error) {
				a, err = c.GetMasterAddrByName(ctx, SentinelMaster).Result()
				return err
			})
			if err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
			addr := net.JoinHostPort(a[0], a[1])
			if addr == old {
				return fmt.Errorf("%s still names %s", s.name, old)
			}
			if named != "" && addr != named {
				return fmt.Errorf("sentinels name %s and %s", named, addr)
			}
			named = addr
		}
		role, err := replication(ctx, named)
		if err != nil {
			return err
		}
		if role["role"] != "master" {
			return fmt.Errorf("%s is still a %s", named, role["role"])
		}
		sw.New = named
		return nil
	})
	sw.Promoted = time.Since(start)
	if err == nil {
		g.mu.Lock()
		g.primary = sw.New
		g.mu.Unlock()
	}
	return sw, err
}

// waitReplicaInSync waits until addr is primary's replica with its link up
// and primary sees it online.
func (g *SentinelGroup) waitReplicaInSync(ctx context.Context, addr, primary string) error {
	return g.poll(ctx, addr+" to be "+primary+"'s replica, in sync", func(ctx context.Context) error {
		r, err := replication(ctx, addr)
		if err != nil {
			return err
		}
		if r["role"] != "slave" || net.JoinHostPort(r["master_host"], r["master_port"]) != primary || r["master_link_status"] != "up" {
			return fmt.Errorf("%s: role %s of %s:%s, link %s", addr, r["role"], r["master_host"], r["master_port"], r["master_link_status"])
		}
		p, err := replication(ctx, primary)
		if err != nil {
			return err
		}
		_, port, _ := net.SplitHostPort(addr)
		for k, v := range p {
			if strings.HasPrefix(k, "slave") && strings.Contains(v, "port="+port+",") && strings.Contains(v, "state=online") {
				return nil
			}
		}
		return fmt.Errorf("%s does not list %s online", primary, addr)
	})
}

// Switches lists the changes of primary the sentinels made, as
// "old → new" in the order the first sentinel logged them (each sentinel
// logs +switch-master when it adopts a new primary).
func (g *SentinelGroup) Switches() []string {
	var out []string
	seen := map[string]bool{}
	for _, s := range g.sentinels {
		b, _ := os.ReadFile(s.log)
		for _, line := range strings.Split(string(b), "\n") {
			_, ev, ok := strings.Cut(line, "+switch-master ")
			if !ok {
				continue
			}
			f := strings.Fields(ev) // name old-ip old-port new-ip new-port
			if len(f) < 5 {
				continue
			}
			sw := net.JoinHostPort(f[1], f[2]) + " → " + net.JoinHostPort(f[3], f[4])
			if !seen[sw] {
				seen[sw] = true
				out = append(out, sw)
			}
		}
	}
	return out
}

// poll calls check every 100ms until it returns nil or ctx ends (then the
// last error says what was not reached).
func (g *SentinelGroup) poll(ctx context.Context, what string, check func(context.Context) error) error {
	for {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := check(cctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (%v)\n%s", what, ctx.Err(), err, g.logTails())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (g *SentinelGroup) logTails() string {
	var b bytes.Buffer
	for _, p := range append(append([]*redisProc{}, g.nodes...), g.sentinels...) {
		b.WriteString(p.logTail() + "\n")
	}
	return b.String()
}

func (g *SentinelGroup) node(addr string) *redisProc {
	for _, p := range g.nodes {
		if p.addr() == addr {
			return p
		}
	}
	return nil
}

// onSentinel runs f with a client of one sentinel, closed afterwards.
func onSentinel(p *redisProc, f func(*redis.SentinelClient) error) error {
	c := redis.NewSentinelClient(&redis.Options{Addr: p.addr(), MaxRetries: -1, DialTimeout: 500 * time.Millisecond})
	defer c.Close()
	return f(c)
}

// replication is INFO replication of the node at addr as a map.
func replication(ctx context.Context, addr string) (map[string]string, error) {
	c := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 500 * time.Millisecond})
	defer c.Close()
	s, err := c.Info(ctx, "replication").Result()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", addr, err)
	}
	out := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			out[k] = v
		}
	}
	return out, nil
}

// Close kills every process and removes the group's directory.
func (g *SentinelGroup) Close() error {
	for _, p := range append(append([]*redisProc{}, g.sentinels...), g.nodes...) {
		p.kill()
	}
	return os.RemoveAll(g.dir)
}
