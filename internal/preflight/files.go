package preflight

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults of Files.
const (
	// DefaultFileTTL: a platform's file is asked of WeChat once a day.
	DefaultFileTTL = 24 * time.Hour
	// refetchAfter: a file found wrong on a domain is asked for again,
	// in case WeChat changed it, unless it was fetched this recently.
	refetchAfter = time.Minute
)

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
}

// NewFiles returns the file cache; fetch is called on a miss.
func NewFiles(rdb redis.UniversalClient, prefix string, fetch FetchFunc) *Files {
	return &Files{rdb: rdb, prefix: prefix, fetch: fetch, ttl: DefaultFileTTL}
}

func (f *Files) key(appid string) string { return f.prefix + "confirmfile:" + appid }

// Get returns the platform's file, from the cache or from WeChat.
func (f *Files) Get(ctx context.Context, appid string) (File, error) {
	b, err := f.rdb.Get(ctx, f.key(appid)).Bytes()
	switch {
	case err == nil:
		var file File
		if json.Unmarshal(b, &file) == nil && file.Name != "" {
			return file, nil
		}
	case !errors.Is(err, redis.Nil):
		return File{}, fmt.Errorf("read verification file of %s: %w", appid, err)
	}
	return f.Fetch(ctx, appid)
}

// Fetch asks WeChat for the file and caches it.
func (f *Files) Fetch(ctx context.Context, appid string) (File, error) {
	name, content, err := f.fetch(ctx, appid)
	if err != nil {
		return File{}, err
	}
	if !fileName.MatchString(name) {
		return File{}, fmt.Errorf("get_domain_confirmfile of %s answered file name %q, not a plain file name", appid, truncate(name, 64))
	}
	file := File{Name: name, Content: content, FetchedAt: time.Now().UTC()}
	b, _ := json.Marshal(file)
	if err := f.rdb.Set(ctx, f.key(appid), b, f.ttl).Err(); err != nil {
		return File{}, fmt.Errorf("keep verification file of %s: %w", appid, err)
	}
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
	file, err := p.Files.Get(ctx, appid)
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
