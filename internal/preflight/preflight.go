// Package preflight checks, before WeChat is called, that a domain serves
// its platform's verification file: https://DOMAIN/FILE_NAME answering 200
// with the file's content. WeChat makes that check itself when a domain is
// added, and answers a missing file with the domain in
// invalid_wxa_jump_h5_domain, after a round trip and a rate-limit slot;
// checking first tells the operator what to fix before anything is spent.
//
// The checker fetches URLs that callers chose, so it never connects to a
// loopback, private, link-local, multicast or unspecified address (checked
// on the address dialled, not only on the name), sends no credentials or
// cookies, and follows no redirect.
package preflight

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// Results of a check: the fixed set of the metric's result label.
const (
	ResultOK       = "ok"
	ResultDNS      = "dns"
	ResultTLS      = "tls"
	ResultStatus   = "status"
	ResultRedirect = "redirect"
	ResultMismatch = "mismatch"
	ResultTimeout  = "timeout"
	ResultRefused  = "refused_address"
	// ResultConnect: the name resolved to a public address that did not
	// take the connection (refused, unreachable).
	ResultConnect = "connect"
)

// Results lists every result, for metrics and documentation.
var Results = []string{ResultOK, ResultDNS, ResultTLS, ResultStatus, ResultRedirect, ResultMismatch, ResultTimeout, ResultRefused, ResultConnect}

// Defaults of Config.
const (
	DefaultTimeout  = 5 * time.Second
	DefaultMaxBody  = 4 << 10
	DefaultParallel = 8
	DefaultCacheTTL = 5 * time.Minute
)

// Finding is the outcome of checking one domain.
type Finding struct {
	Domain string `json:"domain"`
	Result string `json:"result"`
	// Detail says what was found, for an operator to act on.
	Detail    string    `json:"detail,omitempty"`
	URL       string    `json:"url"`
	CheckedAt time.Time `json:"checked_at"`
	// Cached: the result was found in the fleet's cache (another change,
	// or another process, checked the domain moments ago).
	Cached bool `json:"cached,omitempty"`
}

// OK reports whether the domain serves its verification file.
func (f Finding) OK() bool { return f.Result == ResultOK }

// Reason is "ok", or what is wrong in one line.
func (f Finding) Reason() string {
	if f.OK() {
		return ResultOK
	}
	return "verification file missing: " + f.Detail
}

// Config tunes a Checker. The zero value is what production uses.
type Config struct {
	Timeout  time.Duration // per domain; default 5s
	MaxBody  int64         // bytes of the answer read; default 4 KiB
	Parallel int           // domains checked at once by this process; default 8
	CacheTTL time.Duration // how long a result is reused fleet-wide; default 5m
	// Observe, if set, is told the result of every check made (not of
	// those found in the cache), for metrics.
	Observe func(result string)

	// The fields below are for tests, and on purpose have no setting in
	// the environment: production never turns them on.

	// Dial, when set, makes every connection instead of the checker's own
	// dialer, and so without its address check: tests aim the checker at
	// local TLS servers with it.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// RootCAs, when set, replaces the system's roots.
	RootCAs *x509.CertPool
	// Resolve, when set, replaces DNS.
	Resolve func(ctx context.Context, host string) ([]netip.Addr, error)
	// Port replaces 443.
	Port string
}

// Checker checks domains for their verification file and keeps the
// results in Redis, so that a fleet checks a (domain, file) once per
// CacheTTL.
type Checker struct {
	rdb    redis.UniversalClient
	prefix string
	cfg    Config
	client *http.Client
	slots  chan struct{}
}

// NewChecker returns a checker; prefix namespaces its Redis keys.
func NewChecker(rdb redis.UniversalClient, prefix string, cfg Config) *Checker {
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	if cfg.Parallel <= 0 {
		cfg.Parallel = DefaultParallel
	}
	if cfg.CacheTTL <= 0 {
		cfg.CacheTTL = DefaultCacheTTL
	}
	if cfg.Port == "" {
		cfg.Port = "443"
	}
	c := &Checker{rdb: rdb, prefix: prefix, cfg: cfg, slots: make(chan struct{}, cfg.Parallel)}
	dial := c.dial
	if cfg.Dial != nil {
		dial = cfg.Dial
	}
	c.client = &http.Client{
		Transport: &http.Transport{
			// No proxy from the environment: a proxy would dial for us,
			// past the address check.
			Proxy:                  nil,
			DialContext:            dial,
			TLSClientConfig:        &tls.Config{RootCAs: cfg.RootCAs, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout:    cfg.Timeout,
			DisableKeepAlives:      true,
			MaxResponseHeaderBytes: 16 << 10,
			ResponseHeaderTimeout:  cfg.Timeout,
		},
		// A redirect is reported, never followed: WeChat does not follow
		// it either, and it could lead anywhere.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return c
}

// File is a platform's verification file, from get_domain_confirmfile.
type File struct {
	Name      string    `json:"file_name"`
	Content   string    `json:"file_content"`
	FetchedAt time.Time `json:"fetched_at"`
}

// fileName is the form of a file name we put in a URL: WeChat's are short
// names such as "abc123.txt".
var fileName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)

// Check checks each domain for the file, reusing results cached within
// CacheTTL unless fresh (an operator's explicit check) asks for new ones;
// every result made is cached. The findings come in the order of domains.
// An error means Redis or ctx failed, not a domain.
func (c *Checker) Check(ctx context.Context, file File, domains []string, fresh bool) ([]Finding, error) {
	if !fileName.MatchString(file.Name) {
		return nil, fmt.Errorf("verification file name %q is not a plain file name", truncate(file.Name, 64))
	}
	out := make([]Finding, len(domains))
	keys := make([]string, len(domains))
	for i, d := range domains {
		keys[i] = c.cacheKey(d, file)
	}
	todo := make([]int, 0, len(domains))
	if fresh || len(domains) == 0 {
		for i := range domains {
			todo = append(todo, i)
		}
	} else {
		vals, err := c.rdb.MGet(ctx, keys...).Result()
		if err != nil {
			return nil, &StoreError{Op: "read preflight cache", Err: err}
		}
		for i, v := range vals {
			s, ok := v.(string)
			if ok && json.Unmarshal([]byte(s), &out[i]) == nil && out[i].Domain == domains[i] {
				out[i].Cached = true
				continue
			}
			todo = append(todo, i)
		}
	}
	if len(todo) == 0 {
		return out, nil
	}
	var wg sync.WaitGroup
	for _, i := range todo {
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case c.slots <- struct{}{}:
			case <-ctx.Done():
				return
			}
			defer func() { <-c.slots }()
			out[i] = c.checkOne(ctx, domains[i], file)
		}()
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		// Cut short by our caller: no result is trusted, none cached.
		return nil, err
	}
	_, err := c.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, i := range todo {
			b, _ := json.Marshal(out[i])
			p.Set(ctx, keys[i], b, c.cfg.CacheTTL)
		}
		return nil
	})
	if err != nil {
		return nil, &StoreError{Op: "write preflight cache", Err: err}
	}
	return out, nil
}

// cacheKey names a (domain, file) result; the file's content is hashed,
// so that a new file is checked anew.
func (c *Checker) cacheKey(domain string, f File) string {
	h := sha256.Sum256([]byte(domain + "\n" + f.Name + "\n" + f.Content))
	return c.prefix + "preflight:check:" + hex.EncodeToString(h[:16])
}

// URL is where a domain must serve the file.
func URL(domain string, f File) string {
	return "https://" + domain + "/" + url.PathEscape(f.Name)
}

func (c *Checker) checkOne(ctx context.Context, domain string, file File) Finding {
	f := Finding{Domain: domain, URL: URL(domain, file), CheckedAt: time.Now().UTC()}
	f.Result, f.Detail = c.fetch(ctx, f.URL, file.Content)
	if ctx.Err() == nil && c.cfg.Observe != nil {
		c.cfg.Observe(f.Result)
	}
	return f
}

func (c *Checker) fetch(ctx context.Context, u, want string) (result, detail string) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return ResultDNS, "not a valid URL: " + err.Error()
	}
	req.Header.Set("User-Agent", "wxdomain-preflight/1 (verification file check)")
	resp, err := c.client.Do(req)
	if err != nil {
		return c.classify(ctx, err)
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		to := "no Location"
		if loc, err := resp.Location(); err == nil {
			to = loc.Host
			if to == "" {
				to = "a path on the same host"
			}
		}
		return ResultRedirect, fmt.Sprintf("HTTP %d redirect to %s at %s; redirects are not followed, serve the file at the domain's root", resp.StatusCode, truncate(to, 100), u)
	case resp.StatusCode != http.StatusOK:
		return ResultStatus, fmt.Sprintf("HTTP %d at %s", resp.StatusCode, u)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, c.cfg.MaxBody+1))
	if err != nil {
		return c.classify(ctx, err)
	}
	if int64(len(body)) > c.cfg.MaxBody {
		return ResultMismatch, fmt.Sprintf("the answer at %s is larger than %d bytes; want only the file's content", u, c.cfg.MaxBody)
	}
	if got := strings.TrimSpace(string(body)); got != strings.TrimSpace(want) {
		return ResultMismatch, fmt.Sprintf("wrong content at %s: found %q, want the file_content of get_domain_confirmfile", u, truncate(got, 64))
	}
	return ResultOK, ""
}

// refusedError: the name resolved only to addresses the checker never
// connects to.
type refusedError struct {
	host  string
	addrs []netip.Addr
}

func (e *refusedError) Error() string {
	return fmt.Sprintf("%s resolves to %s, not a public address; the checker does not connect there", e.host, e.addrs[0])
}

// dial resolves the host, keeps only public addresses and connects to
// them; the dialer's Control checks the address actually dialled again.
func (c *Checker) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else if c.cfg.Resolve != nil {
		addrs, err = c.cfg.Resolve(ctx, host)
		if err != nil {
			return nil, &net.DNSError{Err: err.Error(), Name: host}
		}
	} else if addrs, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host); err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, &net.DNSError{Err: "no address", Name: host, IsNotFound: true}
	}
	var public []netip.Addr
	for _, a := range addrs {
		if !Refused(a) {
			public = append(public, a)
		}
	}
	if len(public) == 0 {
		return nil, &refusedError{host: host, addrs: addrs}
	}
	d := net.Dialer{Control: func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil || Refused(ap.Addr()) {
			return &refusedError{host: host, addrs: []netip.Addr{ap.Addr()}}
		}
		return nil
	}}
	var errs []error
	for _, a := range public {
		conn, err := d.DialContext(ctx, network, net.JoinHostPort(a.String(), c.cfg.Port))
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, errors.Join(errs...)
}

// classify names what went wrong before an answer was read.
func (c *Checker) classify(ctx context.Context, err error) (string, string) {
	var (
		refused *refusedError
		dnsErr  *net.DNSError
		certErr *tls.CertificateVerificationError
		unknown x509.UnknownAuthorityError
		hostErr x509.HostnameError
		invalid x509.CertificateInvalidError
		alert   tls.AlertError
		record  tls.RecordHeaderError
		netErr  net.Error
	)
	switch {
	case errors.As(err, &refused):
		return ResultRefused, refused.Error()
	case errors.As(err, &dnsErr):
		why := dnsErr.Err
		if dnsErr.IsNotFound {
			why = "no such host"
		}
		return ResultDNS, fmt.Sprintf("DNS lookup of %s failed: %s", dnsErr.Name, why)
	case errors.As(err, &unknown), errors.As(err, &hostErr), errors.As(err, &invalid), errors.As(err, &certErr):
		return ResultTLS, "TLS certificate problem: " + certProblem(err)
	case errors.As(err, &alert), errors.As(err, &record):
		return ResultTLS, "TLS handshake failed: " + truncate(rootCause(err), 160)
	case errors.Is(err, context.DeadlineExceeded) || ctx.Err() != nil || (errors.As(err, &netErr) && netErr.Timeout()):
		return ResultTimeout, fmt.Sprintf("no answer within %s", c.cfg.Timeout)
	}
	return ResultConnect, "could not connect: " + truncate(rootCause(err), 160)
}

// certProblem says what is wrong with the certificate, in x509's words.
func certProblem(err error) string {
	var (
		unknown x509.UnknownAuthorityError
		hostErr x509.HostnameError
		invalid x509.CertificateInvalidError
	)
	switch {
	case errors.As(err, &hostErr):
		return truncate(hostErr.Error(), 200)
	case errors.As(err, &invalid):
		return truncate(invalid.Error(), 200)
	case errors.As(err, &unknown):
		return truncate(unknown.Error(), 200)
	}
	return truncate(rootCause(err), 200)
}

// rootCause is the innermost message: url.Error and net.OpError add
// the URL and addresses, which the finding already names.
func rootCause(err error) string {
	for {
		u := errors.Unwrap(err)
		if u == nil {
			return err.Error()
		}
		if _, ok := err.(interface{ Unwrap() []error }); ok {
			return err.Error()
		}
		err = u
	}
}

// truncate bounds text that came from outside.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

func utf8RuneStart(b byte) bool { return b&0xC0 != 0x80 }
