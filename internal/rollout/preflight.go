package rollout

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/wxdomain/wxdomain/internal/preflight"
	"github.com/wxdomain/wxdomain/tasks"
)

// Preflighter checks a platform's domains for its verification file.
type Preflighter interface {
	Run(ctx context.Context, appid string, domains []string, fresh bool) (preflight.Report, error)
}

// PreflightSummary is a dry run's preflight across its platforms.
type PreflightSummary struct {
	Mode tasks.PreflightMode `json:"mode"`
	// Platforms were checked; Failed of them have a domain that does not
	// serve its file; NotChecked could not be checked (their file could
	// not be had from WeChat).
	Platforms  int `json:"platforms"`
	Failed     int `json:"failed"`
	NotChecked int `json:"not_checked"`
	// Groups gather the failures by domain and result, the most
	// platforms first.
	Groups []PreflightGroup `json:"groups"`
}

// PreflightGroup is one kind of failure on one domain.
type PreflightGroup struct {
	Domain string `json:"domain"`
	// Result is a preflight result (status, dns, ...), or "not_checked".
	Result    string `json:"result"`
	Platforms int    `json:"platforms"`
	// Sample names a few of the platforms; Detail is one's finding.
	Sample []string `json:"sample"`
	Detail string   `json:"detail"`
}

// Lines says the summary in a few lines, e.g. "37 of 200 platforms: file
// missing on cdn.example.com (HTTP 404 ...)".
func (s *PreflightSummary) Lines() []string {
	if len(s.Groups) == 0 {
		return []string{fmt.Sprintf("preflight (%s): all %d platforms serve their verification file on every domain", s.Mode, s.Platforms)}
	}
	out := []string{fmt.Sprintf("preflight (%s): %d of %d platforms have a domain without its verification file", s.Mode, s.Failed, s.Platforms)}
	for _, g := range s.Groups {
		what := "file missing on " + g.Domain
		if g.Result == resultNotChecked {
			what = "not checked"
		}
		out = append(out, fmt.Sprintf("%d of %d platforms: %s (%s; e.g. %s)", g.Platforms, s.Platforms, what, g.Detail, strings.Join(g.Sample, ", ")))
	}
	return out
}

const (
	resultNotChecked = "not_checked"
	// planParallel bounds the platforms a dry run checks at once (the
	// checker bounds the domains).
	planParallel = 8
	sampleSize   = 5
)

// preflightPlan checks every platform of a dry run, as its changes would
// be checked; nil when they would not be (get, delete, off).
func (s *Service) preflightPlan(ctx context.Context, change tasks.JumpDomainChange, platforms []string) (*PreflightSummary, error) {
	mode := change.Preflight.Or(s.cfg.PreflightDefault)
	if s.cfg.Preflight == nil || mode == tasks.PreflightOff || (change.Action != tasks.ActionAdd && change.Action != tasks.ActionSet) {
		return nil, nil
	}
	type result struct {
		rep preflight.Report
		err error
	}
	results := make([]result, len(platforms))
	eachPlatform(platforms, func(i int, p string) {
		rep, err := s.cfg.Preflight.Run(ctx, p, change.Domains, false)
		results[i] = result{rep, err}
	})
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	sum := &PreflightSummary{Mode: mode, Platforms: len(platforms), Groups: []PreflightGroup{}}
	groups := map[[2]string]*PreflightGroup{}
	add := func(domain, res, appid, detail string) {
		g := groups[[2]string{domain, res}]
		if g == nil {
			g = &PreflightGroup{Domain: domain, Result: res, Detail: detail}
			groups[[2]string{domain, res}] = g
		}
		g.Platforms++
		if len(g.Sample) < sampleSize {
			g.Sample = append(g.Sample, appid)
		}
	}
	for i, r := range results {
		if r.err != nil {
			if preflight.IsStoreError(r.err) {
				return nil, r.err
			}
			sum.NotChecked++
			add("", resultNotChecked, platforms[i], r.err.Error())
			continue
		}
		failed := r.rep.Failed()
		if len(failed) > 0 {
			sum.Failed++
		}
		for _, f := range failed {
			add(f.Domain, f.Result, platforms[i], f.Detail)
		}
	}
	for _, g := range groups {
		sum.Groups = append(sum.Groups, *g)
	}
	sort.Slice(sum.Groups, func(i, j int) bool {
		a, b := sum.Groups[i], sum.Groups[j]
		if (a.Result == resultNotChecked) != (b.Result == resultNotChecked) {
			return b.Result == resultNotChecked // what to fix first
		}
		if a.Platforms != b.Platforms {
			return a.Platforms > b.Platforms
		}
		if a.Domain != b.Domain {
			return a.Domain < b.Domain
		}
		return a.Result < b.Result
	})
	return sum, nil
}

// eachPlatform runs fn for every platform of a dry run, planParallel at
// once (a few workers, however many platforms), and returns when all
// are done.
func eachPlatform(platforms []string, fn func(i int, appid string)) {
	next := make(chan int)
	var wg sync.WaitGroup
	for range min(planParallel, len(platforms)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				fn(i, platforms[i])
			}
		}()
	}
	for i := range platforms {
		next <- i
	}
	close(next)
	wg.Wait()
}
