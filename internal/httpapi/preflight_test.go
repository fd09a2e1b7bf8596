package httpapi_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/httpapi"
	"github.com/wxdomain/wxdomain/internal/preflight"
	"github.com/wxdomain/wxdomain/internal/preflight/preflighttest"
)

func TestPreflightRoutes(t *testing.T) {
	t.Parallel()
	files := preflighttest.NewServer(t)
	files.ServeFile("good.example.com", "abc123.txt", "verify-me")
	var fail error
	pf := &preflight.Preflight{}
	b := setup(t, func(c *httpapi.Config) {
		c.MaxDomains = 200
		c.Preflight = pf
	})
	pf.Files = preflight.NewFiles(b.redis.Client, "pf:", func(context.Context, string) (string, string, error) {
		if fail != nil {
			return "", "", fail
		}
		return "abc123.txt", "verify-me", nil
	})
	pf.Checker = preflight.NewChecker(b.redis.Client, "pf:", files.CheckerConfig())

	r := b.do(t, "GET", "/v1/platforms/"+app+"/confirmfile", "", "Authorization", "")
	assert.Equal(t, 401, r.status)
	r = b.do(t, "GET", "/v1/platforms/"+app+"/confirmfile", "")
	require.Equal(t, 200, r.status, r.body)
	assert.Equal(t, "abc123.txt", r.body["file_name"])
	assert.Equal(t, "verify-me", r.body["file_content"])
	assert.Equal(t, "/abc123.txt", r.body["path"])
	r = b.do(t, "GET", "/v1/platforms/wx0000000000000000/confirmfile", "")
	assert.Equal(t, 422, r.status)
	assert.Equal(t, "unknown_platform", errCode(r))

	r = b.do(t, "POST", "/v1/platforms/"+app+"/preflight", `{"domains":["Good.Example.com","bad.example.com"]}`)
	require.Equal(t, 200, r.status, r.body)
	assert.Equal(t, false, r.body["ok"])
	results := r.body["results"].([]any)
	require.Len(t, results, 2)
	first, second := results[0].(map[string]any), results[1].(map[string]any)
	assert.Equal(t, "good.example.com", first["domain"], "domains are normalised as a change's")
	assert.Equal(t, true, first["ok"])
	assert.Equal(t, "status", second["result"])
	assert.Contains(t, second["reason"], "verification file missing: HTTP 404")
	// Fresh: asking again checks again.
	b.do(t, "POST", "/v1/platforms/"+app+"/preflight", `{"domains":["good.example.com"]}`)
	assert.Equal(t, 2, files.CheckerHits("good.example.com"))

	tests := []struct {
		give, wantCode string
	}{
		{`{"domains":["not a domain"]}`, "invalid_domain"},
		{`{"domains":[]}`, "missing_domains"},
		{`{"domains":["a.example.com"],"extra":1}`, "unknown_field"},
		{`{"domains":[` + manyDomains(51) + `]}`, "too_many_domains"},
	}
	for _, tt := range tests {
		r := b.do(t, "POST", "/v1/platforms/"+app+"/preflight", tt.give)
		assert.Contains(t, []int{400, 422}, r.status, tt.give)
		assert.Equal(t, tt.wantCode, errCode(r), tt.give)
	}

	// WeChat refusing the file is a 502 that says why.
	fail = errors.New("get_domain_confirmfile: errcode 61004: access clientip is not registered")
	require.NoError(t, b.redis.Client.Del(context.Background(), "pf:confirmfile:"+app).Err())
	r = b.do(t, "GET", "/v1/platforms/"+app+"/confirmfile", "")
	assert.Equal(t, 502, r.status)
	assert.Equal(t, "upstream_error", errCode(r))
	assert.Contains(t, fmt.Sprint(r.body), "61004")
}

// stubPreflight has a file and finds every domain fine.
type stubPreflight struct{}

func (stubPreflight) File(context.Context, string) (preflight.File, error) {
	return preflight.File{Name: "a.txt", Content: "x"}, nil
}

func (stubPreflight) Run(_ context.Context, appid string, domains []string, _ bool) (preflight.Report, error) {
	rep := preflight.Report{Platform: appid, File: preflight.File{Name: "a.txt", Content: "x"}}
	for _, d := range domains {
		rep.Findings = append(rep.Findings, preflight.Finding{Domain: d, Result: preflight.ResultOK})
	}
	return rep, nil
}

// The mode of a change and of a rollout is taken, and checked.
func TestPreflightModeInRequests(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.do(t, "POST", "/v1/changes", `{"platform":"`+app+`","action":"add","domains":["a.example.com"],"preflight":"enforce"}`)
	require.Equal(t, 202, r.status, r.body)
	assert.Equal(t, "enforce", r.body["preflight_mode"])
	r = b.do(t, "POST", "/v1/changes", `{"platform":"`+app+`","action":"add","domains":["a.example.com"],"preflight":"sometimes"}`)
	assert.Equal(t, 422, r.status)
	assert.Equal(t, "invalid_preflight", errCode(r))
	r = b.do(t, "POST", "/v1/rollouts", `{"action":"add","domains":["a.example.com"],"platforms":"all","preflight":"off"}`)
	require.Equal(t, 202, r.status, r.body)
	assert.Equal(t, "off", r.body["preflight"])
}

func manyDomains(n int) string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf(`"d%d.example.com"`, i)
	}
	return strings.Join(out, ",")
}
