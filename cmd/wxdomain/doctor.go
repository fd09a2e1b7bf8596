package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/wxdomain/wxdomain/internal/config"
)

// doctorReport is what `wxdomain doctor` finds out about the Redis wxdomain
// writes to; --json prints it as it is.
type doctorReport struct {
	RedisURL string `json:"redis_url"`
	Version  string `json:"redis_version"`
	Mode     string `json:"redis_mode,omitempty"`
	// Role is master or replica; Addr is the server wxdomain writes to.
	Role string `json:"role"`
	Addr string `json:"addr"`
	// PrimaryAddr is a replica's primary.
	PrimaryAddr string            `json:"primary_addr,omitempty"`
	Replicas    []doctorReplica   `json:"replicas"`
	Sentinel    *doctorSentinel   `json:"sentinel,omitempty"`
	Eviction    doctorEviction    `json:"eviction"`
	Persistence doctorPersistence `json:"persistence"`
	// The server's own min-replicas-to-write / min-replicas-max-lag; null
	// when CONFIG GET is refused (managed Redis often disables it).
	MinReplicasToWrite *int          `json:"min_replicas_to_write"`
	MinReplicasMaxLag  *int          `json:"min_replicas_max_lag"`
	DurableAck         doctorDurable `json:"durable_ack"`
	Warnings           []string      `json:"warnings"`
	Notes              []string      `json:"notes,omitempty"`
	ExitStatus         int           `json:"exit_status"`
	configErr          map[string]error
}

type doctorReplica struct {
	Addr       string `json:"addr"`
	State      string `json:"state"`
	LagSeconds int64  `json:"lag_seconds"`
	// LagBytes is how far the replica's acknowledged offset is behind the
	// primary's replication offset.
	LagBytes int64 `json:"lag_bytes"`
}

type doctorSentinel struct {
	MasterName string `json:"master_name"`
	// From the first sentinel that answers SENTINEL MASTER.
	Flags          string               `json:"flags,omitempty"`
	Quorum         int                  `json:"quorum,omitempty"`
	KnownSentinels int                  `json:"known_sentinels,omitempty"`
	KnownReplicas  int                  `json:"known_replicas,omitempty"`
	Views          []doctorSentinelView `json:"views"`
}

// doctorSentinelView is one configured sentinel's answer to "where is the master".
type doctorSentinelView struct {
	Addr   string `json:"addr"`
	Master string `json:"master,omitempty"`
	Error  string `json:"error,omitempty"`
}

type doctorEviction struct {
	Policy string `json:"maxmemory_policy"`
	// MaxMemory 0 is no limit (nothing is evicted until one is set).
	MaxMemory int64 `json:"maxmemory"`
}

type doctorPersistence struct {
	AOF bool `json:"aof_enabled"`
	// AppendFsync and RDBSave (the save config) are "unknown" when CONFIG
	// GET is refused.
	AppendFsync         string `json:"appendfsync"`
	RDBSave             string `json:"rdb_save"`
	RDBLastBgsaveStatus string `json:"rdb_last_bgsave_status"`
	AOFLastWriteStatus  string `json:"aof_last_write_status,omitempty"`
}

// doctorDurable says whether durable acknowledgement can work.
type doctorDurable struct {
	// WXDOMAIN_REDIS_MIN_REPLICAS and WXDOMAIN_REDIS_WAIT_TIMEOUT.
	MinReplicas   int   `json:"min_replicas"`
	WaitTimeoutMS int64 `json:"wait_timeout_ms"`
	// OnlineReplicas are the primary's replicas in state online.
	OnlineReplicas int `json:"online_replicas"`
	// State is off (MinReplicas 0), ok or cannot work.
	State string         `json:"state"`
	Test  doctorWaitTest `json:"test"`
}

// doctorWaitTest is the live test: a marker written, then WAITed for on
// the same connection, as an acknowledged write is.
type doctorWaitTest struct {
	Key       string  `json:"key"`
	Asked     int     `json:"asked"`
	Confirmed int     `json:"confirmed"`
	TookMS    float64 `json:"took_ms"`
	Error     string  `json:"error,omitempty"`
}

const (
	durableOff    = "off"
	durableOK     = "ok"
	durableCannot = "cannot work"
	unknown       = "unknown"
)

func (a *app) doctorCommand() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "doctor [--json]",
		Short: "Check the Redis wxdomain uses: role, replicas, eviction, persistence, durable acknowledgement",
		Long: `Connects to WXDOMAIN_REDIS_URL (any form, Sentinel included) and reports the
Redis version, the role and address of the server wxdomain writes to, its
replicas and their lag, the sentinels' view of the master, maxmemory-policy,
persistence (AOF, RDB), min-replicas-to-write / min-replicas-max-lag, and
whether durable acknowledgement (WXDOMAIN_REDIS_MIN_REPLICAS) can work: it
writes a marker key under WXDOMAIN_KEY_PREFIX, WAITs for the replicas on the
same connection, reports how many confirmed and how fast, and deletes the key.

It warns on an allkeys-* eviction policy (Redis silently deletes queued work),
on volatile-* (it evicts records and tokens, which have a TTL), on neither AOF
nor RDB, and when durable acknowledgement cannot work. The password is never
printed.

Exit status:
  0  all is well
  1  error: the settings are wrong, or Redis cannot be reached or read
  2  the report has warnings`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := a.config()
			if err != nil {
				return err
			}
			r, err := diagnose(cmd.Context(), cfg)
			if err != nil {
				if asJSON {
					_ = a.printJSON(map[string]any{"redis_url": config.RedactURL(cfg.RedisURL), "error": err.Error(), "exit_status": 1})
				}
				return err
			}
			if asJSON {
				err = a.printJSON(r)
			} else {
				err = printDoctor(a.stdout, r)
			}
			if err != nil {
				return err
			}
			if r.ExitStatus != 0 {
				return &exitStatus{code: r.ExitStatus}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

// diagnose connects and gathers the report; an error means there is none
// (no connection, INFO refused).
func diagnose(ctx context.Context, cfg config.Config) (*doctorReport, error) {
	r := &doctorReport{RedisURL: config.RedactURL(cfg.RedisURL), configErr: map[string]error{}}
	rdb, err := config.OpenRedis(cfg.RedisURL)
	if err != nil {
		return nil, err
	}
	defer rdb.Close()
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = rdb.Ping(pctx).Err()
	cancel()
	if err != nil {
		return nil, fmt.Errorf("cannot connect to Redis at %s: %w", r.RedisURL, err)
	}

	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	raw, err := rdb.Info(ictx).Result()
	if err != nil {
		return nil, fmt.Errorf("INFO on Redis at %s: %w", r.RedisURL, err)
	}
	info := parseInfo(raw)
	r.Version, r.Mode = info["redis_version"], info["redis_mode"]
	if r.Mode == "sentinel" {
		return nil, fmt.Errorf("%s is a Sentinel, not a Redis that holds data: name the sentinels in a Sentinel URL (see WXDOMAIN_REDIS_URL in the README)", r.RedisURL)
	}
	r.readReplication(info)
	r.Eviction.Policy = info["maxmemory_policy"]
	r.Eviction.MaxMemory, _ = strconv.ParseInt(info["maxmemory"], 10, 64)
	r.Persistence = doctorPersistence{
		AOF:                 info["aof_enabled"] == "1",
		AppendFsync:         unknown,
		RDBSave:             unknown,
		RDBLastBgsaveStatus: info["rdb_last_bgsave_status"],
		AOFLastWriteStatus:  info["aof_last_write_status"],
	}
	r.readConfig(ictx, rdb)
	so := sentinelOptions(cfg.RedisURL)
	r.Addr = serverAddr(ictx, rdb, so != nil)
	if so != nil {
		r.Sentinel = askSentinels(ctx, so)
		if r.Addr == "" {
			for _, v := range r.Sentinel.Views {
				if v.Master != "" {
					r.Addr = v.Master
					break
				}
			}
		}
	}

	r.DurableAck = doctorDurable{MinReplicas: cfg.MinReplicas(), WaitTimeoutMS: cfg.RedisWaitTimeout.Milliseconds(), OnlineReplicas: r.onlineReplicas()}
	asked := r.DurableAck.MinReplicas
	if asked == 0 {
		// Nothing is required, yet show what the replicas there are confirm.
		asked = r.DurableAck.OnlineReplicas
	}
	r.DurableAck.Test = waitTest(ctx, rdb, cfg.KeyPrefix+"doctor:"+randomHex(), asked, cfg.RedisWaitTimeout)
	r.judge()
	return r, nil
}

// readReplication fills the role, a replica's primary and a primary's replicas.
func (r *doctorReport) readReplication(info map[string]string) {
	r.Role = info["role"]
	if r.Role == "slave" {
		r.Role = "replica"
		r.PrimaryAddr = net.JoinHostPort(info["master_host"], info["master_port"])
	}
	offset, _ := strconv.ParseInt(info["master_repl_offset"], 10, 64)
	r.Replicas = []doctorReplica{}
	for i := 0; ; i++ {
		v, ok := info["slave"+strconv.Itoa(i)]
		if !ok {
			break
		}
		f := map[string]string{}
		for _, kv := range strings.Split(v, ",") {
			k, val, _ := strings.Cut(kv, "=")
			f[k] = val
		}
		rep := doctorReplica{Addr: net.JoinHostPort(f["ip"], f["port"]), State: f["state"]}
		rep.LagSeconds, _ = strconv.ParseInt(f["lag"], 10, 64)
		if o, err := strconv.ParseInt(f["offset"], 10, 64); err == nil {
			rep.LagBytes = max(0, offset-o)
		}
		r.Replicas = append(r.Replicas, rep)
	}
}

// readConfig reads what only CONFIG GET tells; each refusal leaves its
// value unknown.
func (r *doctorReport) readConfig(ctx context.Context, rdb redis.UniversalClient) {
	get := func(name string) (string, bool) {
		m, err := rdb.ConfigGet(ctx, name).Result()
		if err != nil {
			r.configErr[name] = err
			return "", false
		}
		v, ok := m[name]
		return v, ok
	}
	if v, ok := get("save"); ok {
		r.Persistence.RDBSave = v
	}
	if v, ok := get("appendfsync"); ok {
		r.Persistence.AppendFsync = v
	}
	for name, field := range map[string]**int{"min-replicas-to-write": &r.MinReplicasToWrite, "min-replicas-max-lag": &r.MinReplicasMaxLag} {
		if v, ok := get(name); ok {
			if n, err := strconv.Atoi(v); err == nil {
				*field = &n
			}
		}
	}
}

// serverAddr names the server wxdomain writes to: the address a plain URL
// dials, or for a Sentinel URL the address the server sees our connection
// arrive at (CLIENT INFO, Redis 6.2+); "" when that is refused.
func serverAddr(ctx context.Context, rdb redis.UniversalClient, viaSentinel bool) string {
	if c, ok := rdb.(*redis.Client); ok && !viaSentinel {
		return c.Options().Addr
	}
	s, err := rdb.Do(ctx, "CLIENT", "INFO").Text()
	if err != nil {
		return ""
	}
	for _, f := range strings.Fields(s) {
		if v, ok := strings.CutPrefix(f, "laddr="); ok {
			return v
		}
	}
	return ""
}

// askSentinels asks each configured sentinel where the master is, and the
// first that answers for its view of it.
func askSentinels(ctx context.Context, o *redis.FailoverOptions) *doctorSentinel {
	s := &doctorSentinel{MasterName: o.MasterName, Views: []doctorSentinelView{}}
	for _, addr := range o.SentinelAddrs {
		sc := redis.NewSentinelClient(&redis.Options{
			Addr: addr, Username: o.SentinelUsername, Password: o.SentinelPassword, TLSConfig: o.TLSConfig,
			DialTimeout: 2 * time.Second, ReadTimeout: 2 * time.Second, MaxRetries: -1,
		})
		cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		v := doctorSentinelView{Addr: addr}
		hp, err := sc.GetMasterAddrByName(cctx, o.MasterName).Result()
		switch {
		case errors.Is(err, redis.Nil):
			v.Error = fmt.Sprintf("does not know a master named %q", o.MasterName)
		case err != nil:
			v.Error = err.Error()
		case len(hp) == 2:
			v.Master = net.JoinHostPort(hp[0], hp[1])
		}
		if v.Master != "" && s.Flags == "" {
			if m, err := sc.Master(cctx, o.MasterName).Result(); err == nil {
				s.Flags = m["flags"]
				s.Quorum, _ = strconv.Atoi(m["quorum"])
				others, _ := strconv.Atoi(m["num-other-sentinels"])
				s.KnownSentinels = others + 1
				s.KnownReplicas, _ = strconv.Atoi(m["num-slaves"])
			}
		}
		cancel()
		_ = sc.Close()
		s.Views = append(s.Views, v)
	}
	return s
}

// waitTest writes a marker and WAITs for asked replicas as an acknowledged
// write does: both in one pipeline, so on one connection (WAIT counts the
// replicas that have this connection's writes). Then it deletes the marker.
func waitTest(ctx context.Context, rdb redis.UniversalClient, key string, asked int, timeout time.Duration) doctorWaitTest {
	t := doctorWaitTest{Key: key, Asked: asked}
	tctx, cancel := context.WithTimeout(ctx, timeout+5*time.Second)
	defer cancel()
	var (
		set  *redis.StatusCmd
		wait *redis.Cmd
	)
	start := time.Now()
	_, err := rdb.Pipelined(tctx, func(p redis.Pipeliner) error {
		// The TTL removes the marker should the DEL below not reach Redis.
		set = p.Set(tctx, key, "wxdomain doctor", time.Minute)
		wait = p.Do(tctx, "WAIT", asked, timeout.Milliseconds())
		return nil
	})
	t.TookMS = float64(time.Since(start).Microseconds()) / 1000
	n, _ := wait.Int()
	t.Confirmed = n
	switch {
	case set.Err() != nil:
		t.Error = "write the marker: " + set.Err().Error()
	case wait.Err() != nil:
		t.Error = "WAIT: " + wait.Err().Error()
	case err != nil:
		t.Error = err.Error()
	}
	dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer dcancel()
	if err := rdb.Del(dctx, key).Err(); err != nil && t.Error == "" {
		t.Error = "delete the marker (it expires in a minute): " + err.Error()
	}
	return t
}

func (r *doctorReport) onlineReplicas() int {
	n := 0
	for _, rep := range r.Replicas {
		if rep.State == "online" {
			n++
		}
	}
	return n
}

// judge turns the findings into warnings (data can be lost, or writes
// fail: exit status 3) and notes (worth knowing), and sets the durable
// acknowledgement's state.
func (r *doctorReport) judge() {
	warn := func(format string, args ...any) { r.Warnings = append(r.Warnings, fmt.Sprintf(format, args...)) }
	note := func(format string, args ...any) { r.Notes = append(r.Notes, fmt.Sprintf(format, args...)) }
	online := r.onlineReplicas()

	if r.Role != "master" {
		warn("wxdomain writes to a %s (of %s): Redis refuses its writes (READONLY); point WXDOMAIN_REDIS_URL at the primary or at the sentinels", r.Role, r.PrimaryAddr)
	}
	for _, rep := range r.Replicas {
		if rep.State != "online" {
			note("replica %s is %s, not online: it confirms no writes yet", rep.Addr, rep.State)
		}
	}

	switch p := r.Eviction.Policy; {
	case strings.HasPrefix(p, "allkeys-"):
		warn("maxmemory-policy %s: when memory is full Redis silently deletes any key, queued changes included; set maxmemory-policy noeviction", p)
	case strings.HasPrefix(p, "volatile-"):
		warn("maxmemory-policy %s: when memory is full Redis deletes keys that have a TTL: task records, component tokens, rollouts; set maxmemory-policy noeviction", p)
	case p == "":
		note("INFO memory does not show maxmemory_policy; make sure it is noeviction")
	}

	ps := r.Persistence
	switch {
	case !ps.AOF && ps.RDBSave == "":
		warn("neither AOF nor RDB is on: a restart of Redis loses every queued change, record and token; set appendonly yes (appendfsync everysec)")
	case !ps.AOF && ps.RDBSave == unknown:
		note("AOF is off and the RDB save schedule is unknown (CONFIG GET refused): check your provider's persistence; appendonly yes is what keeps queued work across a restart")
	case !ps.AOF:
		note("only RDB snapshots (save %q): a restart loses the writes since the last one; appendonly yes keeps them", ps.RDBSave)
	case ps.AppendFsync == "no":
		note("appendfsync no: the operating system decides when the AOF reaches the disk; everysec loses at most about a second")
	}
	if s := ps.RDBLastBgsaveStatus; s != "" && s != "ok" {
		warn("the last RDB snapshot failed (rdb_last_bgsave_status %s): see the Redis log", s)
	}
	if s := ps.AOFLastWriteStatus; ps.AOF && s != "" && s != "ok" {
		warn("the last AOF write failed (aof_last_write_status %s): Redis refuses writes until it succeeds; see the Redis log", s)
	}

	if r.MinReplicasToWrite != nil && *r.MinReplicasToWrite > online && r.Role == "master" {
		warn("min-replicas-to-write %d but %s online: Redis refuses every write (NOREPLICAS)", *r.MinReplicasToWrite, count(online, "replica"))
	}
	if (r.MinReplicasToWrite == nil || *r.MinReplicasToWrite == 0) && len(r.Replicas) > 0 {
		note("min-replicas-to-write is %s: a primary cut off from its replicas keeps taking writes that a failover then throws away; set min-replicas-to-write 1 and min-replicas-max-lag 10", intOrUnknown(r.MinReplicasToWrite))
	}
	if len(r.configErr) > 0 {
		names := make([]string, 0, len(r.configErr))
		for n := range r.configErr {
			names = append(names, n)
		}
		slices.Sort(names)
		note("CONFIG GET refused (%v): %s unknown", r.configErr[names[0]], strings.Join(names, ", "))
	}

	if s := r.Sentinel; s != nil {
		masters := map[string]bool{}
		for _, v := range s.Views {
			if v.Error != "" {
				warn("sentinel %s: %s", v.Addr, v.Error)
			} else if v.Master != "" {
				masters[v.Master] = true
			}
		}
		if len(masters) > 1 {
			warn("the sentinels disagree on where master %s is: %s", s.MasterName, strings.Join(slices.Sorted(func(yield func(string) bool) {
				for m := range masters {
					if !yield(m) {
						return
					}
				}
			}), ", "))
		}
		if strings.Contains(s.Flags, "down") {
			warn("the sentinels flag master %s as %s", s.MasterName, s.Flags)
		}
		if s.Quorum > 0 && s.KnownSentinels < s.Quorum {
			warn("%d sentinels watch master %s, fewer than its quorum %d: no failover can happen", s.KnownSentinels, s.MasterName, s.Quorum)
		}
	}

	d, t := &r.DurableAck, r.DurableAck.Test
	wait := time.Duration(d.WaitTimeoutMS) * time.Millisecond
	if t.Error != "" {
		warn("the live test failed: %s", t.Error)
	}
	switch {
	case d.MinReplicas == 0:
		d.State = durableOff
		if online > 0 {
			warn("WXDOMAIN_REDIS_MIN_REPLICAS=0 with %s online: acknowledged writes are not waited for, so a failover can lose changes that enqueue reported queued; set it to 1", count(online, "replica"))
		}
		if t.Error == "" && t.Confirmed < t.Asked {
			note("%d of %d replicas confirmed the marker within %s", t.Confirmed, t.Asked, wait)
		}
	case r.Role != "master" || t.Error != "":
		d.State = durableCannot
	case online < d.MinReplicas:
		d.State = durableCannot
		warn("durable acknowledgement cannot work: WXDOMAIN_REDIS_MIN_REPLICAS=%d but %s online; every enqueue, API submission and final record would wait WXDOMAIN_REDIS_WAIT_TIMEOUT (%s) and fail as not confirmed", d.MinReplicas, count(online, "replica"), wait)
	case t.Confirmed < d.MinReplicas:
		d.State = durableCannot
		warn("durable acknowledgement cannot work now: %d of %d replicas confirmed the marker within WXDOMAIN_REDIS_WAIT_TIMEOUT (%s); check the replicas' lag", t.Confirmed, d.MinReplicas, wait)
	default:
		d.State = durableOK
	}

	if len(r.Warnings) > 0 {
		r.ExitStatus = exitNotAllSucceeded
	}
	r.Warnings = append([]string{}, r.Warnings...)
}

func printDoctor(w io.Writer, r *doctorReport) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	row := func(k, format string, args ...any) { fmt.Fprintf(tw, "%s\t%s\n", k, fmt.Sprintf(format, args...)) }
	row("redis", "%s", r.RedisURL)
	// Every data node of a Sentinel setup says standalone: only other modes are news.
	if r.Mode != "" && r.Mode != "standalone" {
		row("version", "%s (%s)", r.Version, r.Mode)
	} else {
		row("version", "%s", r.Version)
	}
	addr := r.Addr
	if addr == "" {
		addr = "(address unknown)"
	}
	if r.Role == "replica" {
		row("writes go to", "%s, role replica of %s", addr, r.PrimaryAddr)
	} else {
		row("writes go to", "%s, role %s", addr, r.Role)
	}
	if len(r.Replicas) == 0 {
		row("replicas", "none connected")
	} else {
		row("replicas", "%d connected, %d online", len(r.Replicas), r.onlineReplicas())
	}
	for _, rep := range r.Replicas {
		row("  "+rep.Addr, "%s, lag %ds, %d bytes behind", rep.State, rep.LagSeconds, rep.LagBytes)
	}
	if s := r.Sentinel; s != nil {
		if s.Flags != "" {
			row("sentinel", "master %s: flags %s, quorum %d, %s and %s known", s.MasterName, s.Flags, s.Quorum, count(s.KnownSentinels, "sentinel"), count(s.KnownReplicas, "replica"))
		} else {
			row("sentinel", "master %s", s.MasterName)
		}
		for _, v := range s.Views {
			if v.Error != "" {
				row("  "+v.Addr, "error: %s", v.Error)
			} else {
				row("  "+v.Addr, "master at %s", v.Master)
			}
		}
	}
	maxmem := "no limit"
	if r.Eviction.MaxMemory > 0 {
		maxmem = fmt.Sprintf("%.1f MiB", float64(r.Eviction.MaxMemory)/(1<<20))
	}
	row("eviction", "maxmemory-policy %s, maxmemory %s", r.Eviction.Policy, maxmem)
	ps := r.Persistence
	aof := "off"
	if ps.AOF {
		aof = "on, appendfsync " + ps.AppendFsync
	}
	rdb := "off (save \"\")"
	switch ps.RDBSave {
	case unknown:
		rdb = "unknown (CONFIG GET refused)"
	case "":
	default:
		rdb = fmt.Sprintf("save %q", ps.RDBSave)
	}
	row("persistence", "AOF %s; RDB %s, last bgsave %s", aof, rdb, ps.RDBLastBgsaveStatus)
	row("min-replicas", "min-replicas-to-write %s, min-replicas-max-lag %s", intOrUnknown(r.MinReplicasToWrite), intOrUnknown(r.MinReplicasMaxLag))
	d, t := r.DurableAck, r.DurableAck.Test
	wait := time.Duration(d.WaitTimeoutMS) * time.Millisecond
	row("durable ack", "%s: WXDOMAIN_REDIS_MIN_REPLICAS=%d, WXDOMAIN_REDIS_WAIT_TIMEOUT=%s, %s online", d.State, d.MinReplicas, wait, count(d.OnlineReplicas, "replica"))
	if t.Error != "" {
		row("live test", "marker %s: %s", t.Key, t.Error)
	} else {
		took := time.Duration(t.TookMS * float64(time.Millisecond)).Round(100 * time.Microsecond)
		row("live test", "SET %s, WAIT %d %d: %d of %d replicas confirmed in %s; marker deleted", t.Key, t.Asked, d.WaitTimeoutMS, t.Confirmed, t.Asked, took)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(r.Warnings)+len(r.Notes) > 0 {
		fmt.Fprintln(w)
	}
	for _, m := range r.Warnings {
		fmt.Fprintln(w, "WARNING:", m)
	}
	for _, m := range r.Notes {
		fmt.Fprintln(w, "note:", m)
	}
	fmt.Fprintln(w)
	if len(r.Warnings) == 0 {
		_, err := fmt.Fprintln(w, "no warnings")
		return err
	}
	_, err := fmt.Fprintf(w, "%s (exit status %d)\n", count(len(r.Warnings), "warning"), exitNotAllSucceeded)
	return err
}

// count is "1 replica", "2 replicas".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

func intOrUnknown(n *int) string {
	if n == nil {
		return unknown
	}
	return strconv.Itoa(*n)
}

// parseInfo reads INFO's "key:value" lines.
func parseInfo(s string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = v
		}
	}
	return m
}

// sentinelOptions returns the failover options of a Sentinel URL, in both
// forms config.OpenRedis reads, or nil for a plain URL.
func sentinelOptions(raw string) *redis.FailoverOptions {
	u, err := url.Parse(raw)
	if err != nil {
		return nil
	}
	switch {
	case (u.Scheme == "redis" || u.Scheme == "rediss") && u.Query().Get("master_name") != "":
		o, err := redis.ParseFailoverURL(raw)
		if err != nil {
			return nil
		}
		return o
	case u.Scheme == "redis-sentinel":
		o := &redis.FailoverOptions{MasterName: u.Query().Get("master"), SentinelAddrs: strings.Split(u.Host, ",")}
		if p, ok := u.User.Password(); ok {
			o.SentinelPassword = p
		}
		return o
	}
	return nil
}

func randomHex() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
