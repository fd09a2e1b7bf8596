package rollout_test

import (
	"context"
	"errors"
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/preflight"
	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/tasks"
)

// preflightFunc is a Preflighter from a function.
type preflightFunc func(appid string, domains []string) (preflight.Report, error)

func (f preflightFunc) Run(_ context.Context, appid string, domains []string, _ bool) (preflight.Report, error) {
	return f(appid, domains)
}

// A dry run sums the preflight up; WeChat unreachable for one platform's
// file (a network error, not Redis) makes it "not checked", not a failed
// dry run; Redis failing the preflight fails the dry run; get, delete and
// off check nothing.
func TestDryRunPreflight(t *testing.T) {
	t.Parallel()
	rb := redistest.Mini(t)
	client := tasks.NewClient(rb.Client, tasks.ClientConfig{Prefix: rb.Prefix, Queue: rb.Queue})
	t.Cleanup(func() { _ = client.Close() })
	var storeDown bool
	pf := preflightFunc(func(appid string, domains []string) (preflight.Report, error) {
		switch {
		case storeDown:
			return preflight.Report{}, &preflight.StoreError{Op: "read verification file", Err: errors.New("connection refused")}
		case appid == platforms[2]:
			return preflight.Report{}, &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("no route to host")}
		}
		rep := preflight.Report{Platform: appid}
		for _, d := range domains {
			f := preflight.Finding{Domain: d, Result: preflight.ResultOK}
			if appid == platforms[1] && d == "cdn.example.com" {
				f.Result, f.Detail = preflight.ResultStatus, "HTTP 404 at https://cdn.example.com/x.txt"
			}
			rep.Findings = append(rep.Findings, f)
		}
		return rep, nil
	})
	svc := rollout.New(rb.Client, client, rollout.Config{Prefix: rb.Prefix, Queue: rb.Queue, Platforms: platforms, Preflight: pf})
	t.Cleanup(func() { _ = svc.Close() })
	ctx := context.Background()

	r, err := svc.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"shop.example.com", "cdn.example.com"}, All: true, DryRun: true})
	require.NoError(t, err)
	sum := r.PreflightPlan
	require.NotNil(t, sum)
	assert.Equal(t, tasks.PreflightWarn, sum.Mode)
	assert.Equal(t, 3, sum.Platforms)
	assert.Equal(t, 1, sum.Failed)
	assert.Equal(t, 1, sum.NotChecked)
	assert.Equal(t, []string{
		"preflight (warn): 1 of 3 platforms have a domain without its verification file",
		"1 of 3 platforms: file missing on cdn.example.com (HTTP 404 at https://cdn.example.com/x.txt; e.g. " + platforms[1] + ")",
		"1 of 3 platforms: not checked (dial tcp: no route to host; e.g. " + platforms[2] + ")",
	}, sum.Lines())

	for _, spec := range []rollout.Spec{
		{Action: tasks.ActionDelete, Domains: []string{"a.example.com"}, All: true, DryRun: true},
		{Action: tasks.ActionAdd, Domains: []string{"a.example.com"}, All: true, DryRun: true, Preflight: tasks.PreflightOff},
	} {
		r, err := svc.Create(ctx, spec)
		require.NoError(t, err)
		assert.Nil(t, r.PreflightPlan, spec)
	}

	storeDown = true
	_, err = svc.Create(ctx, rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"a.example.com"}, All: true, DryRun: true})
	assert.True(t, preflight.IsStoreError(err), err)
}
