package preflight

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/singleflight"
)

// Defaults of Files.
const (
	// DefaultFileTTL: a platform's file is asked of WeChat once a day.
	DefaultFileTTL = 24 * time.Hour
	// refetchAfter: a file found wrong on a domain is asked for again,
	// in case WeChat changed it, unless it was fetched this recently.
	refetchAfter = time.Minute
	// fetchLease: while one process asks WeChat for a platform's file,
	// the others wait for its answer, this long at most.
	fetchLease = 10 * time.Second
	fetchPoll  = 50 * time.Millisecond
	// unavailableTTL: a file WeChat will not hand out for good (the API
	// refused, or is absent from an upstream) is not asked for again by
	// every change for this long.
	unavailableTTL = 10 * time.Minute
)

// StoreError is Redis failing the preflight (not a domain, not WeChat):
// the caller retries, as for any Redis trouble.
type StoreError struct {
	Op  string
	Err error
}

func (e *StoreError) Error() string { return e.Op + ": " + e.Err.Error() }
func (e *StoreError) Unwrap() error { return e.Err }

// IsStoreError reports whether err is Redis failing the preflight.
func IsStoreError(err error) bool {
	var se *StoreError
	return errors.As(err, &se)
}

// UnavailableError: WeChat will not hand out the platform's file, for a
// reason that does not pass by itself (a FetchFunc wraps such errors in
// it). The refusal is remembered for a while, so that the fleet does not
// spend a call and a rate slot on it per change.
type UnavailableError struct {
	Reason string
	Err    error // nil when remembered from an earlier fetch
}

func (e *UnavailableError) Error() string { return e.Reason }
func (e *UnavailableError) Unwrap() error { return e.Err }

// FetchFunc asks WeChat for a platform's verification file
// (get_domain_confirmfile), through the fleet's token and rate limiter.
type FetchFunc func(ctx context.Context, appid string) (name, content string, err error)

// Files keeps each platform's verification file in Redis, shared by the
// fleet.
type Files struct {
	rdb    redis.UniversalClient
	prefix string
	fetch  FetchFunc
	ttl    time.Duration
	group  singleflight.Group

	// local keeps what was read for a short while (localTTL): a change's
	// preflight then reads only its domains' results from Redis.
	mu    sync.Mutex
	local map[string]kept
}

// kept is a platform's file as read (a refusal remembered instead is
// not kept: it is read from Redis, where another process may end it).
type kept struct {
	file  File
	until time.Time
}

// localTTL is how long a process trusts the file it read for a change's
// preflight: a file WeChat replaced is seen by every process within it
// (a domain found serving other content also makes the file be asked for
// again, see Run). Get and a fresh Run (an operator's) read Redis.
const localTTL = time.Minute

// NewFiles returns the file cache; fetch is called on a miss.
func NewFiles(rdb redis.UniversalClient, prefix string, fetch FetchFunc) *Files {
	return &Files{rdb: rdb, prefix: prefix, fetch: fetch, ttl: DefaultFileTTL, local: map[string]kept{}}
}

func (f *Files) keep(appid string, k kept) {
	k.until = time.Now().Add(localTTL)
	f.mu.Lock()
	f.local[appid] = k
	f.mu.Unlock()
}

func (f *Files) kept(appid string) (kept, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	k, ok := f.local[appid]
	if ok && time.Now().After(k.until) {
		delete(f.local, appid)
		return kept{}, false
	}
	return k, ok
}

func (f *Files) key(appid string) string     { return f.prefix + "confirmfile:" + appid }
func (f *Files) lockKey(appid string) string { return f.prefix + "confirmfile_lock:" + appid }
func (f *Files) errKey(appid string) string  { return f.prefix + "confirmfile_unavailable:" + appid }

// cached reads the platform's file from Redis, or the refusal remembered
// instead (an *UnavailableError), in one round trip; ok is false on a miss.
func (f *Files) cached(ctx context.Context, appid string) (File, bool, error) {
	vals, err := f.rdb.MGet(ctx, f.key(appid), f.errKey(appid)).Result()
	if err != nil {
		return File{}, false, &StoreError{Op: "read verification file of " + appid, Err: err}
	}
	if s, ok := vals[0].(string); ok {
		var file File
		if json.Unmarshal([]byte(s), &file) == nil && file.Name != "" {
			f.keep(appid, kept{file: file})
			return file, true, nil
		}
	}
	if s, ok := vals[1].(string); ok {
		return File{}, false, &UnavailableError{Reason: s}
	}
	return File{}, false, nil
}

// Get returns the platform's file, from the cache or from WeChat. On a
// miss the fleet asks WeChat once: one caller per process, one process
// under a lock, the others waiting for its answer (a rollout's changes of
// one platform would otherwise each spend a call and a rate slot).
func (f *Files) Get(ctx context.Context, appid string) (File, error) {
	return f.get(ctx, appid, false)
}

// get is Get; recent takes what this process read within localTTL (a
// change's preflight) instead of reading Redis.
func (f *Files) get(ctx context.Context, appid string, recent bool) (File, error) {
	if k, ok := f.kept(appid); ok && recent {
		return k.file, nil
	}
	if file, ok, err := f.cached(ctx, appid); ok || err != nil {
		return file, err
	}
	v, err, _ := f.group.Do(appid, func() (any, error) {
		got, err := f.rdb.SetNX(ctx, f.lockKey(appid), "1", fetchLease).Result()
		if err != nil {
			return File{}, &StoreError{Op: "lock verification file of " + appid, Err: err}
		}
		if got {
			defer f.rdb.Del(context.WithoutCancel(ctx), f.lockKey(appid))
			// Double check: another process may have fetched it between
			// our miss and our lock.
			if file, ok, err := f.cached(ctx, appid); ok || err != nil {
				return file, err
			}
			return f.Fetch(ctx, appid)
		}
		deadline := time.Now().Add(fetchLease)
		for time.Now().Before(deadline) {
			t := time.NewTimer(fetchPoll)
			select {
			case <-ctx.Done():
				t.Stop()
				return File{}, ctx.Err()
			case <-t.C:
			}
			if file, ok, err := f.cached(ctx, appid); ok || err != nil {
				return file, err
			}
			if n, err := f.rdb.Exists(ctx, f.lockKey(appid)).Result(); err == nil && n == 0 {
				// The other process is done: it kept the file (read it
				// now), or gave up (ask ourselves).
				if file, ok, err := f.cached(ctx, appid); ok || err != nil {
					return file, err
				}
				break
			}
		}
		return f.Fetch(ctx, appid)
	})
	if err != nil {
		return File{}, err
	}
	return v.(File), nil
}

// Fetch asks WeChat for the file and caches it.
func (f *Files) Fetch(ctx context.Context, appid string) (File, error) {
	name, content, err := f.fetch(ctx, appid)
	var ue *UnavailableError
	if errors.As(err, &ue) {
		if serr := f.rdb.Set(ctx, f.errKey(appid), ue.Reason, unavailableTTL).Err(); serr != nil {
			return File{}, &StoreError{Op: "remember refusal of verification file of " + appid, Err: serr}
		}
	}
	if err != nil {
		return File{}, err
	}
	if !fileName.MatchString(name) {
		return File{}, fmt.Errorf("get_domain_confirmfile of %s answered file name %q, not a plain file name", appid, truncate(name, 64))
	}
	file := File{Name: name, Content: content, FetchedAt: time.Now().UTC()}
	b, _ := json.Marshal(file)
	_, err = f.rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, f.key(appid), b, f.ttl)
		p.Del(ctx, f.errKey(appid))
		return nil
	})
	if err != nil {
		return File{}, &StoreError{Op: "keep verification file of " + appid, Err: err}
	}
	f.keep(appid, kept{file: file})
	return file, nil
}

// Preflight checks a platform's domains: its file, then each domain.
type Preflight struct {
	Files   *Files
	Checker *Checker
}

// File is the platform's verification file (see Files.Get).
func (p *Preflight) File(ctx context.Context, appid string) (File, error) {
	return p.Files.Get(ctx, appid)
}

// Report is a platform's preflight.
type Report struct {
	Platform string    `json:"platform"`
	File     File      `json:"file"`
	Findings []Finding `json:"findings"`
}

// Failed lists the findings that are not ok.
func (r Report) Failed() []Finding {
	var out []Finding
	for _, f := range r.Findings {
		if !f.OK() {
			out = append(out, f)
		}
	}
	return out
}

// Reasons maps each domain to "ok" or what is wrong (a record's
// preflight field).
func (r Report) Reasons() map[string]string {
	out := make(map[string]string, len(r.Findings))
	for _, f := range r.Findings {
		out[f.Domain] = f.Reason()
	}
	return out
}

// Passed lists the domains that serve their file, in order.
func (r Report) Passed() []string {
	var out []string
	for _, f := range r.Findings {
		if f.OK() {
			out = append(out, f.Domain)
		}
	}
	return out
}

// Run checks the domains against the platform's file. A wrong content
// may mean WeChat gave the platform a new file: it is asked for again
// (at most once a minute) and, if it changed, the domains are checked
// against the new one.
func (p *Preflight) Run(ctx context.Context, appid string, domains []string, fresh bool) (Report, error) {
	file, err := p.Files.get(ctx, appid, !fresh)
	if err != nil {
		return Report{}, err
	}
	findings, err := p.Checker.Check(ctx, file, domains, fresh)
	if err != nil {
		return Report{}, err
	}
	mismatch := false
	for _, f := range findings {
		mismatch = mismatch || f.Result == ResultMismatch
	}
	if mismatch && !fresh {
		// This process's copy may be older than the fleet's: another
		// process may have asked WeChat for the file already.
		if nf, ok, err := p.Files.cached(ctx, appid); err == nil && ok {
			file, nf = nf, file
			if nf.Name != file.Name || nf.Content != file.Content {
				if findings, err = p.Checker.Check(ctx, file, domains, fresh); err != nil {
					return Report{}, err
				}
				mismatch = false
				for _, f := range findings {
					mismatch = mismatch || f.Result == ResultMismatch
				}
			}
		}
	}
	if mismatch && time.Since(file.FetchedAt) > refetchAfter {
		nf, err := p.Files.Fetch(ctx, appid)
		if err != nil {
			return Report{}, err
		}
		if nf.Name != file.Name || nf.Content != file.Content {
			file = nf
			if findings, err = p.Checker.Check(ctx, file, domains, fresh); err != nil {
				return Report{}, err
			}
		}
	}
	return Report{Platform: appid, File: file, Findings: findings}, nil
}
