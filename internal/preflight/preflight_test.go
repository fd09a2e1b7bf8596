package preflight_test

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/preflight"
	"github.com/wxdomain/wxdomain/internal/preflight/preflighttest"
	"github.com/wxdomain/wxdomain/internal/redistest"
)

var file = preflight.File{Name: "abc123.txt", Content: "verify-abc123"}

type testBundle struct {
	rdb    redistest.Bundle
	server *preflighttest.Server
}

func setup(t *testing.T) testBundle {
	t.Helper()
	return testBundle{rdb: redistest.Real(t), server: preflighttest.NewServer(t)}
}

func (b testBundle) checker(cfg preflight.Config) *preflight.Checker {
	return preflight.NewChecker(b.rdb.Client, b.rdb.Prefix, cfg)
}

func TestEveryFailureIsNamed(t *testing.T) {
	t.Parallel()
	b := setup(t)
	s := b.server
	s.ServeFile("good.example.com", file.Name, "\n  verify-abc123 \r\n")
	s.ServeFile("wrong.example.com", file.Name, "<html>welcome to our shop</html>")
	s.ServeFile("expired.example.com", file.Name, file.Content)
	s.ServeFile("wrongname.example.com", file.Name, file.Content)
	s.Handle("moved.example.com", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "https://cdn.elsewhere.example/abc123.txt", http.StatusFound)
	})
	s.Handle("slow.example.com", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(3 * time.Second):
		case <-r.Context().Done():
		}
	})
	s.Handle("huge.example.com", func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(strings.Repeat("x", 10<<10)))
	})
	cfg := s.CheckerConfig()
	cfg.Timeout = 500 * time.Millisecond
	var mu sync.Mutex
	observed := map[string]int{}
	cfg.Observe = func(r string) { mu.Lock(); observed[r]++; mu.Unlock() }
	c := b.checker(cfg)

	tests := []struct {
		give       string
		wantResult string
		wantDetail string
	}{
		{"good.example.com", preflight.ResultOK, ""},
		{"missing.example.com", preflight.ResultStatus, "HTTP 404 at https://missing.example.com/abc123.txt"},
		{"wrong.example.com", preflight.ResultMismatch, `found "<html>welcome to our shop</html>"`},
		{"huge.example.com", preflight.ResultMismatch, "larger than 4096 bytes"},
		{"moved.example.com", preflight.ResultRedirect, "redirect to cdn.elsewhere.example"},
		{"expired.example.com", preflight.ResultTLS, "expired"},
		{"wrongname.example.com", preflight.ResultTLS, "not wrongname.example.com"},
		{"slow.example.com", preflight.ResultTimeout, "no answer within 500ms"},
	}
	domains := make([]string, len(tests))
	for i, tt := range tests {
		domains[i] = tt.give
	}
	findings, err := c.Check(context.Background(), file, domains, false)
	require.NoError(t, err)
	require.Len(t, findings, len(tests))
	for i, tt := range tests {
		f := findings[i]
		assert.Equal(t, tt.give, f.Domain)
		assert.Equal(t, tt.wantResult, f.Result, "%s: %s", tt.give, f.Detail)
		assert.Contains(t, f.Detail, tt.wantDetail, tt.give)
		if tt.wantResult != preflight.ResultOK {
			assert.True(t, strings.HasPrefix(f.Reason(), "verification file missing: "), f.Reason())
		}
	}
	assert.Equal(t, map[string]int{"ok": 1, "status": 1, "mismatch": 2, "redirect": 1, "tls": 2, "timeout": 1}, observed)
	assert.Equal(t, 0, s.Hits("cdn.elsewhere.example"), "a redirect is not followed")
	// The mismatch shows at most 64 bytes of what was found.
	long := "verify-" + strings.Repeat("y", 200)
	s.ServeFile("long.example.com", file.Name, long)
	findings, err = c.Check(context.Background(), file, []string{"long.example.com"}, false)
	require.NoError(t, err)
	assert.Less(t, len(findings[0].Detail), 250)
}

func TestUntrustedCertificateIsATLSFinding(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.server.ServeFile("good.example.com", file.Name, file.Content)
	cfg := b.server.CheckerConfig()
	cfg.RootCAs = nil // the system's roots do not know the test CA
	findings, err := b.checker(cfg).Check(context.Background(), file, []string{"good.example.com"}, false)
	require.NoError(t, err)
	assert.Equal(t, preflight.ResultTLS, findings[0].Result)
	assert.Contains(t, findings[0].Detail, "unknown authority")
}

func TestDNSAndConnectFailures(t *testing.T) {
	t.Parallel()
	b := setup(t)
	cfg := preflight.Config{
		Resolve: func(_ context.Context, host string) ([]netip.Addr, error) {
			return nil, errors.New("no such host")
		},
	}
	findings, err := b.checker(cfg).Check(context.Background(), file, []string{"nowhere.example.com"}, false)
	require.NoError(t, err)
	assert.Equal(t, preflight.ResultDNS, findings[0].Result)
	assert.Contains(t, findings[0].Detail, "DNS lookup of nowhere.example.com failed")

	// A port nobody listens on: the connection is refused.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := ln.Addr().String()
	require.NoError(t, ln.Close())
	cfg = preflight.Config{Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, closed)
	}}
	findings, err = b.checker(cfg).Check(context.Background(), file, []string{"closed.example.com"}, false)
	require.NoError(t, err)
	assert.Equal(t, preflight.ResultConnect, findings[0].Result, findings[0].Detail)
}

// A name that resolves to a private address is refused before any
// connection: the test server listens on 127.0.0.1 at the port the
// checker would dial, and sees nothing.
func TestPrivateAddressesAreRefusedWithoutAConnection(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.server.ServeFile("inside.example.com", file.Name, file.Content)
	var resolved atomic.Int32
	addrs := map[string][]netip.Addr{
		"inside.example.com":   {netip.MustParseAddr("127.0.0.1")},
		"ten.example.com":      {netip.MustParseAddr("10.0.0.1")},
		"metadata.example.com": {netip.MustParseAddr("169.254.169.254")},
		"mapped.example.com":   {netip.MustParseAddr("::ffff:127.0.0.1")},
	}
	cfg := preflight.Config{
		Port:    b.server.Port(),
		RootCAs: b.server.CA,
		Resolve: func(_ context.Context, host string) ([]netip.Addr, error) {
			resolved.Add(1)
			return addrs[host], nil
		},
	}
	c := b.checker(cfg)
	for host, want := range addrs {
		findings, err := c.Check(context.Background(), file, []string{host}, true)
		require.NoError(t, err)
		assert.Equal(t, preflight.ResultRefused, findings[0].Result, host)
		assert.Contains(t, findings[0].Detail, want[0].String(), host)
	}
	assert.EqualValues(t, len(addrs), resolved.Load())
	assert.Equal(t, 0, b.server.TotalHits(), "no connection reached the server")

	// An IP literal as the domain is checked the same way.
	findings, err := c.Check(context.Background(), file, []string{"127.0.0.1"}, true)
	require.NoError(t, err)
	assert.Equal(t, preflight.ResultRefused, findings[0].Result)
	assert.Equal(t, 0, b.server.TotalHits())
}

func TestRefusedAddresses(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give string
		want bool
	}{
		{"127.0.0.1", true},
		{"127.8.9.10", true},
		{"::1", true},
		{"10.0.0.1", true},
		{"172.16.0.1", true},
		{"172.31.255.255", true},
		{"192.168.1.1", true},
		{"fc00::1", true},
		{"fd12:3456::1", true},
		{"169.254.169.254", true},
		{"fe80::1", true},
		{"224.0.0.1", true},
		{"239.255.255.250", true},
		{"ff02::1", true},
		{"0.0.0.0", true},
		{"::", true},
		{"0.1.2.3", true},
		{"100.64.0.1", true},
		{"192.0.2.10", true},
		{"198.18.0.1", true},
		{"255.255.255.255", true},
		{"240.0.0.1", true},
		{"::ffff:10.0.0.1", true},
		{"::ffff:127.0.0.1", true},
		{"64:ff9b::a00:1", true}, // NAT64 of 10.0.0.1
		{"2002:7f00:1::", true},  // 6to4 of 127.0.0.1
		{"2001:db8::1", true},
		{"fec0::1", true},
		{"8.8.8.8", false},
		{"172.32.0.1", false},
		{"100.128.0.1", false},
		{"203.0.114.1", false},
		{"2606:4700::1111", false},
		{"::ffff:8.8.8.8", false},
		{"64:ff9b::808:808", false}, // NAT64 of 8.8.8.8
	}
	for _, tt := range tests {
		assert.Equal(t, tt.want, preflight.Refused(netip.MustParseAddr(tt.give)), tt.give)
	}
	assert.True(t, preflight.Refused(netip.Addr{}), "the zero address")
}

// Results are shared by the fleet for five minutes: a second check of the
// same domain and file does not fetch again, a new file does.
func TestResultsAreCached(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.server.ServeFile("good.example.com", file.Name, file.Content)
	var checks atomic.Int32
	cfg := b.server.CheckerConfig()
	cfg.Observe = func(string) { checks.Add(1) }
	c := b.checker(cfg)
	other := b.checker(cfg) // another process, same Redis

	f1, err := c.Check(context.Background(), file, []string{"good.example.com", "missing.example.com"}, false)
	require.NoError(t, err)
	f2, err := other.Check(context.Background(), file, []string{"good.example.com", "missing.example.com"}, false)
	require.NoError(t, err)
	assert.Equal(t, 1, b.server.Hits("good.example.com"))
	assert.Equal(t, 1, b.server.Hits("missing.example.com"))
	assert.EqualValues(t, 2, checks.Load())
	assert.False(t, f1[0].Cached)
	assert.True(t, f2[0].Cached)
	assert.Equal(t, f1[1].Result, f2[1].Result)

	keys, err := b.rdb.Client.Keys(context.Background(), b.rdb.Prefix+"preflight:check:*").Result()
	require.NoError(t, err)
	require.Len(t, keys, 2)
	ttl, err := b.rdb.Client.PTTL(context.Background(), keys[0]).Result()
	require.NoError(t, err)
	assert.InDelta(t, preflight.DefaultCacheTTL.Seconds(), ttl.Seconds(), 5)

	// fresh (an operator's explicit check) fetches again.
	_, err = c.Check(context.Background(), file, []string{"good.example.com"}, true)
	require.NoError(t, err)
	assert.Equal(t, 2, b.server.Hits("good.example.com"))

	// Another file is another check.
	nf := preflight.File{Name: "new.txt", Content: "v2"}
	_, err = c.Check(context.Background(), nf, []string{"good.example.com"}, false)
	require.NoError(t, err)
	assert.Equal(t, 3, b.server.Hits("good.example.com"))
}

func TestAtMostEightAtOnce(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var now, peak atomic.Int32
	domains := make([]string, 20)
	for i := range domains {
		domains[i] = "d" + string(rune('a'+i)) + ".example.com"
		b.server.Handle(domains[i], func(w http.ResponseWriter, r *http.Request) {
			n := now.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			time.Sleep(50 * time.Millisecond)
			now.Add(-1)
			_, _ = w.Write([]byte(file.Content))
		})
	}
	findings, err := b.checker(b.server.CheckerConfig()).Check(context.Background(), file, domains, false)
	require.NoError(t, err)
	for _, f := range findings {
		assert.True(t, f.OK(), f.Detail)
	}
	assert.LessOrEqual(t, peak.Load(), int32(8))
	assert.Greater(t, peak.Load(), int32(1), "domains are checked in parallel")
}

func TestNoCredentialsOrCookiesAreSent(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var got http.Header
	b.server.Handle("good.example.com", func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Clone()
		http.SetCookie(w, &http.Cookie{Name: "session", Value: "x"})
		_, _ = w.Write([]byte(file.Content))
	})
	c := b.checker(b.server.CheckerConfig())
	for range 2 {
		_, err := c.Check(context.Background(), file, []string{"good.example.com"}, true)
		require.NoError(t, err)
	}
	assert.Empty(t, got.Get("Cookie"))
	assert.Empty(t, got.Get("Authorization"))
	assert.Contains(t, got.Get("User-Agent"), "wxdomain-preflight")
}

func TestCanceledCheckIsNotCached(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.server.Handle("slow.example.com", func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := b.checker(b.server.CheckerConfig()).Check(ctx, file, []string{"slow.example.com"}, false)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	keys, err := b.rdb.Client.Keys(context.Background(), b.rdb.Prefix+"preflight:check:*").Result()
	require.NoError(t, err)
	assert.Empty(t, keys)
}

// A content mismatch asks WeChat for the file again: it may have changed.
func TestMismatchRefetchesTheFile(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.server.ServeFile("good.example.com", "new.txt", "v2")
	var fetches atomic.Int32
	fetch := func(_ context.Context, appid string) (string, string, error) {
		if fetches.Add(1) == 1 {
			return "new.txt", "v1", nil
		}
		return "new.txt", "v2", nil
	}
	// One process fetched the file; another checks the domain against it.
	files := preflight.NewFiles(b.rdb.Client, b.rdb.Prefix, fetch)
	p := &preflight.Preflight{Files: preflight.NewFiles(b.rdb.Client, b.rdb.Prefix, fetch), Checker: b.checker(b.server.CheckerConfig())}
	// The first fetch is made to look older than a minute.
	_, err := files.Get(context.Background(), "wx0123456789abcdef")
	require.NoError(t, err)
	key := b.rdb.Prefix + "confirmfile:wx0123456789abcdef"
	require.NoError(t, b.rdb.Client.Set(context.Background(), key,
		`{"file_name":"new.txt","file_content":"v1","fetched_at":"2020-01-01T00:00:00Z"}`, time.Hour).Err())

	rep, err := p.Run(context.Background(), "wx0123456789abcdef", []string{"good.example.com"}, false)
	require.NoError(t, err)
	assert.True(t, rep.Findings[0].OK(), rep.Findings[0].Detail)
	assert.Equal(t, "v2", rep.File.Content)
	assert.EqualValues(t, 2, fetches.Load())

	// Cached for a day.
	ttl, err := b.rdb.Client.TTL(context.Background(), key).Result()
	require.NoError(t, err)
	assert.Greater(t, ttl, 23*time.Hour)
	rep, err = p.Run(context.Background(), "wx0123456789abcdef", []string{"good.example.com"}, false)
	require.NoError(t, err)
	assert.True(t, rep.Findings[0].Cached)
	assert.EqualValues(t, 2, fetches.Load())
}

func TestFileNamesFromWeChatAreChecked(t *testing.T) {
	t.Parallel()
	b := setup(t)
	files := preflight.NewFiles(b.rdb.Client, b.rdb.Prefix, func(context.Context, string) (string, string, error) {
		return "../../etc/passwd", "x", nil
	})
	_, err := files.Get(context.Background(), "wx0123456789abcdef")
	require.ErrorContains(t, err, "not a plain file name")
}

// A fleet asks WeChat for a platform's file once, however many changes
// of it start together in however many processes.
func TestFileIsFetchedOncePerFleet(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var fetches atomic.Int32
	fetch := func(context.Context, string) (string, string, error) {
		fetches.Add(1)
		time.Sleep(100 * time.Millisecond) // WeChat's round trip
		return "abc.txt", "v", nil
	}
	procs := []*preflight.Files{preflight.NewFiles(b.rdb.Client, b.rdb.Prefix, fetch), preflight.NewFiles(b.rdb.Client, b.rdb.Prefix, fetch)}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := procs[i%2].Get(context.Background(), "wx0123456789abcdef")
			assert.NoError(t, err)
			assert.Equal(t, "abc.txt", f.Name)
		}()
	}
	wg.Wait()
	assert.EqualValues(t, 1, fetches.Load())
}

// A refusal for good is remembered: the next changes do not ask again
// until it expires, and a file had later clears it.
func TestUnavailableFileIsRemembered(t *testing.T) {
	t.Parallel()
	b := setup(t)
	var fetches atomic.Int32
	files := preflight.NewFiles(b.rdb.Client, b.rdb.Prefix, func(context.Context, string) (string, string, error) {
		fetches.Add(1)
		return "", "", &preflight.UnavailableError{Reason: "errcode 48001: api unauthorized"}
	})
	for range 3 {
		_, err := files.Get(context.Background(), "wx0123456789abcdef")
		var ue *preflight.UnavailableError
		require.ErrorAs(t, err, &ue)
		assert.Contains(t, ue.Reason, "48001")
	}
	assert.EqualValues(t, 1, fetches.Load())
	ttl, err := b.rdb.Client.TTL(context.Background(), b.rdb.Prefix+"confirmfile_unavailable:wx0123456789abcdef").Result()
	require.NoError(t, err)
	assert.InDelta(t, (10 * time.Minute).Seconds(), ttl.Seconds(), 5)
}
