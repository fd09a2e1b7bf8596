package console_test

import (
	"context"
	"encoding/csv"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"

	"github.com/wxdomain/wxdomain/internal/console"
	"github.com/wxdomain/wxdomain/internal/httpapi"
	"github.com/wxdomain/wxdomain/internal/platform"
	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/tasks"
)

const roToken = "rollouts-console-token"

// roEnv is the real router (the API's auth and same-origin rule around
// the console) over a Redis, with a fleet of n platforms.
type roEnv struct {
	h         http.Handler
	rb        redistest.Bundle
	client    *tasks.Client
	svc       *rollout.Service
	platforms []string
}

// roMeanings stands for the worker's errcode table.
func roMeaning(code int) string {
	switch code {
	case 65316:
		return "the platform has reached its jump-domain limit; delete unused domains first"
	case -1:
		return "WeChat is busy"
	}
	return "WeChat refused the change"
}

func roPlatforms(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("wx%016x", 0xabc000+i)
	}
	return out
}

func newRoEnv(t testing.TB, n int, opts ...func(*console.Config)) *roEnv {
	return newRoEnvOn(t, redistest.Mini(t), n, opts...)
}

func newRoEnvOn(t testing.TB, rb redistest.Bundle, n int, opts ...func(*console.Config)) *roEnv {
	t.Helper()
	e := &roEnv{rb: rb, platforms: roPlatforms(n)}
	known := make(map[string]bool, n)
	statuses := make([]platform.Status, n)
	for i, p := range e.platforms {
		known[p] = true
		statuses[i] = platform.Status{AppID: p}
	}
	rules := tasks.Rules{KnownPlatform: func(a string) bool { return known[a] }}
	e.client = tasks.NewClient(rb.Client, tasks.ClientConfig{Prefix: rb.Prefix, Queue: rb.Queue, Rules: rules})
	t.Cleanup(func() { _ = e.client.Close() })
	e.svc = rollout.New(rb.Client, e.client, rollout.Config{
		Prefix: rb.Prefix, Queue: rb.Queue, BulkQueue: rb.Queue + "_bulk", Platforms: e.platforms, Rules: rules, TTL: time.Hour,
	})
	t.Cleanup(func() { _ = e.svc.Close() })
	report := func(context.Context) ([]platform.Status, error) { return statuses, nil }
	cfg := console.Config{
		Client: e.client, Rollouts: e.svc, Platforms: report, KnownPlatform: rules.KnownPlatform, Meaning: roMeaning,
		MonitoringPath: "/monitoring", Queue: rb.Queue, BulkQueue: rb.Queue + "_bulk", Log: zap.NewNop(),
	}
	for _, o := range opts {
		o(&cfg)
	}
	ui := console.New(cfg)
	e.h = httpapi.New(httpapi.Config{
		Client: e.client, Rollouts: e.svc, KnownPlatform: rules.KnownPlatform, Platforms: report,
		Console: ui, Tokens: []string{roToken}, Log: zap.NewNop(),
	})
	return e
}

// get and post send requests as a logged-in browser of the console's own
// pages; redirects are not followed.
func (e *roEnv) get(t testing.TB, path string) *httptest.ResponseRecorder {
	t.Helper()
	return e.send(httptest.NewRequest(http.MethodGet, path, nil))
}

func (e *roEnv) post(t testing.TB, path string, form url.Values) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	return e.send(req)
}

func (e *roEnv) send(req *http.Request) *httptest.ResponseRecorder {
	req.SetBasicAuth("operator", roToken)
	w := httptest.NewRecorder()
	e.h.ServeHTTP(w, req)
	return w
}

// create makes a rollout over the first n platforms and fans it out.
func (e *roEnv) create(t testing.TB, name string, n int) *rollout.Rollout {
	t.Helper()
	ctx := context.Background()
	r, err := e.svc.Create(ctx, rollout.Spec{Name: name, Action: tasks.ActionAdd, Domains: []string{"shop.example.com"}, Platforms: e.platforms[:n]})
	require.NoError(t, err)
	e.fanOut(t, r.ID, 0)
	return r
}

func (e *roEnv) fanOut(t testing.TB, id string, attempt int) {
	t.Helper()
	payload := fmt.Appendf(nil, `{"rollout_id":%q,"attempt":%d}`, id, attempt)
	require.NoError(t, e.svc.ProcessTask(context.Background(), asynq.NewTask(rollout.TypeFanout, payload)))
}

// finish writes a platform's change as a worker would end it.
func (e *roEnv) finish(t testing.TB, id string, attempt int, appid string, fn func(*tasks.Record)) {
	t.Helper()
	_, err := e.client.Store().Update(context.Background(), rollout.TaskID(id, attempt, appid), func(r *tasks.Record) error {
		fn(r)
		return nil
	})
	require.NoError(t, err)
}

func failedWith(code int, msg, why string) func(*tasks.Record) {
	return func(r *tasks.Record) {
		r.Status, r.Attempts, r.ErrMsg, r.Error = tasks.StatusFailed, 1, msg, why
		if code != 0 {
			c := code
			r.ErrCode = &c
		}
	}
}

func succeeded(r *tasks.Record) {
	r.Status, r.Attempts = tasks.StatusSucceeded, 1
	zero := 0
	r.ErrCode, r.ErrMsg = &zero, "ok"
	lists := []string{"shop.example.com"}
	r.TestingDomains = &lists
}

// assertPage checks what every console page keeps to: HTML, no inline
// style (the CSP forbids it), no stack trace.
func assertPage(t testing.TB, w *httptest.ResponseRecorder) string {
	t.Helper()
	body := w.Body.String()
	assert.Equal(t, "text/html; charset=utf-8", w.Header().Get("Content-Type"))
	assert.Contains(t, w.Header().Get("Content-Security-Policy"), "style-src 'self'")
	assert.NotContains(t, body, "style=", "the CSP forbids inline styles")
	assert.NotContains(t, body, "goroutine ")
	assert.NotContains(t, body, ".go:")
	return body
}

func TestRolloutsListEmptyThenWithData(t *testing.T) {
	t.Parallel()
	e := newRoEnv(t, 4)
	w := e.get(t, "/ui/rollouts")
	require.Equal(t, http.StatusOK, w.Code)
	body := assertPage(t, w)
	assert.Contains(t, body, "No rollouts yet")
	assert.Contains(t, body, `aria-current="page">Rollouts`)

	r := e.create(t, "shop launch", 4)
	e.finish(t, r.ID, 0, e.platforms[0], succeeded)
	e.finish(t, r.ID, 0, e.platforms[1], failedWith(65316, "reach limit", "limit"))
	unnamed, err := e.svc.Create(context.Background(), rollout.Spec{Action: tasks.ActionDelete, Domains: []string{"a.example.com", "b.example.com", "c.example.com", "d.example.com"}, Platforms: e.platforms[:2]})
	require.NoError(t, err)

	w = e.get(t, "/ui/rollouts")
	require.Equal(t, http.StatusOK, w.Code)
	body = assertPage(t, w)
	assert.NotContains(t, body, "No rollouts yet")
	assert.Contains(t, body, `<a href="/ui/rollouts/`+r.ID+`">shop launch</a>`)
	assert.Contains(t, body, `<progress class="bar" max="4" value="2"`, "2 of 4 done")
	assert.Contains(t, body, "2/4 · 50%")
	assert.Contains(t, body, "shop.example.com")
	assert.Contains(t, body, "<code>add</code>")
	assert.Contains(t, body, `<td class="num status-failed">1</td>`)
	assert.Contains(t, body, "2 <small class=\"note\">2/0/0</small>", "queued/running/retrying")
	// An unnamed rollout is named by its id; long domain lists are cut.
	assert.Contains(t, body, `<a href="/ui/rollouts/`+unnamed.ID+`">`+unnamed.ID+`</a>`)
	assert.Contains(t, body, "a.example.com, b.example.com, c.example.com and 1 more")
	assert.Contains(t, body, "fanning_out")
	// Newest first.
	assert.Less(t, strings.Index(body, unnamed.ID), strings.Index(body, r.ID))
}

func TestRolloutsDetailPageJustCreatedAndFinished(t *testing.T) {
	t.Parallel()
	e := newRoEnv(t, 3)
	// Just created: nothing fanned out yet, every platform queued.
	r, err := e.svc.Create(context.Background(), rollout.Spec{Name: "fresh", Action: tasks.ActionAdd, Domains: []string{"shop.example.com"}, Platforms: e.platforms, Publish: true})
	require.NoError(t, err)
	w := e.get(t, "/ui/rollouts/"+r.ID)
	require.Equal(t, http.StatusOK, w.Code)
	body := assertPage(t, w)
	assert.Contains(t, body, "<h1>Rollout fresh</h1>")
	assert.Contains(t, body, `data-poll="/ui/rollouts/`+r.ID+`/progress"`)
	assert.NotContains(t, body, `data-done`, "it runs: the page keeps polling")
	assert.Contains(t, body, "testing and published lists")
	assert.Contains(t, body, `<b>3</b>queued`)
	assert.Contains(t, body, "No platform failed.")
	assert.Contains(t, body, `action="/ui/rollouts/`+r.ID+`/cancel"`)
	assert.NotContains(t, body, `action="/ui/rollouts/`+r.ID+`/retry"`, "nothing to retry")
	assert.Contains(t, body, `href="/ui/rollouts/`+r.ID+`/failures.csv"`)
	assert.Equal(t, 3, strings.Count(body, `<td class="status-queued">queued</td>`))
	assert.Contains(t, body, `<div class="table-wrap">`)

	// Finished: counts, no cancel, done.
	e.fanOut(t, r.ID, 0)
	for _, p := range e.platforms {
		e.finish(t, r.ID, 0, p, succeeded)
	}
	w = e.get(t, "/ui/rollouts/"+r.ID)
	require.Equal(t, http.StatusOK, w.Code)
	body = assertPage(t, w)
	assert.Contains(t, body, `data-done="true"`)
	assert.Contains(t, body, `<b class="ok">done</b>`)
	assert.Contains(t, body, `<b class="status-succeeded">3</b>succeeded`)
	assert.Contains(t, body, `<progress class="bar" max="3" value="3"`)
	assert.NotContains(t, body, "/cancel\"", "nothing left to cancel")
	assert.NotContains(t, body, "/retry\"", "nothing to retry")
	assert.Contains(t, body, "3 of 3 platforms done (100%)")
}

func TestRolloutsProgressFragment(t *testing.T) {
	t.Parallel()
	e := newRoEnv(t, 2)
	r := e.create(t, "frag", 2)
	e.finish(t, r.ID, 0, e.platforms[0], succeeded)

	w := e.get(t, "/ui/rollouts/"+r.ID+"/progress")
	require.Equal(t, http.StatusOK, w.Code)
	body := assertPage(t, w)
	assert.True(t, strings.HasPrefix(body, `<section class="rollout-progress" id="progress" data-poll="/ui/rollouts/`+r.ID+`/progress"`), "the root carries data-poll: %.120s", body)
	assert.NotContains(t, body, "data-done")
	assert.NotContains(t, body, "<html", "a fragment, not a page")
	assert.Contains(t, body, "1 of 2 platforms done (50%)")
	assert.Contains(t, body, `<progress class="bar" max="2" value="1"`)

	e.finish(t, r.ID, 0, e.platforms[1], failedWith(-1, "system error", "WeChat is busy"))
	w = e.get(t, "/ui/rollouts/"+r.ID+"/progress")
	require.Equal(t, http.StatusOK, w.Code)
	body = w.Body.String()
	root := body[:strings.Index(body, ">")]
	assert.Contains(t, root, `data-poll="/ui/rollouts/`+r.ID+`/progress"`)
	assert.Contains(t, root, `data-done="true"`, "finished: the polling stops")
	assert.Contains(t, body, "Reload the page")
	assert.Contains(t, body, `<b class="status-failed">1</b>failed`)

	assert.Equal(t, http.StatusNotFound, e.get(t, "/ui/rollouts/nothex/progress").Code)
	assert.Equal(t, http.StatusNotFound, e.get(t, "/ui/rollouts/0123456789abcdef/progress").Code)
}

func TestRolloutsFailuresGroupedByErrcode(t *testing.T) {
	t.Parallel()
	e := newRoEnv(t, 7)
	r := e.create(t, "grouped", 7)
	p := e.platforms
	limit := "the platform has reached its jump-domain limit; delete unused domains first (errcode 65316: reach limit)"
	e.finish(t, r.ID, 0, p[0], failedWith(65316, "reach limit", limit))
	e.finish(t, r.ID, 0, p[1], failedWith(65316, "reach limit", limit))
	e.finish(t, r.ID, 0, p[2], failedWith(65316, "reach limit", limit))
	e.finish(t, r.ID, 0, p[3], failedWith(-1, "system error", "WeChat is busy (errcode -1: system error); gave up after 5 attempts"))
	e.finish(t, r.ID, 0, p[4], failedWith(0, "", "the platform's token could not be had: ticket missing"))
	e.finish(t, r.ID, 0, p[5], failedWith(0, "", "the platform's token could not be had: ticket missing"))
	e.finish(t, r.ID, 0, p[6], succeeded)

	w := e.get(t, "/ui/rollouts/"+r.ID)
	require.Equal(t, http.StatusOK, w.Code)
	body := assertPage(t, w)
	section := body[strings.Index(body, `id="failures"`):strings.Index(body, `id="platforms"`)]
	// Most platforms first: 65316 (3), "no errcode" (2), -1 (1).
	i65316, iNone, iBusy := strings.Index(section, "<code>65316</code>"), strings.Index(section, "no errcode"), strings.Index(section, "<code>-1</code>")
	require.True(t, i65316 >= 0 && iNone >= 0 && iBusy >= 0, section)
	assert.Less(t, i65316, iNone)
	assert.Less(t, iNone, iBusy)
	assert.Contains(t, section, "<b>the platform has reached its jump-domain limit; delete unused domains first</b>", "the errcode's meaning")
	assert.Contains(t, section, "errmsg: reach limit")
	assert.Contains(t, section, `<td class="num status-failed">3</td>`)
	assert.Contains(t, section, "<b>WeChat is busy</b>")
	assert.Contains(t, section, "the platform&#39;s token could not be had: ticket missing <small class=\"note\">— 2: ", "no errcode: the error's text")
	for _, a := range p[:6] {
		assert.Contains(t, section, a)
	}
	assert.NotContains(t, section, p[6])

	// The table filtered to failed platforms, errcodes and reasons shown.
	w = e.get(t, "/ui/rollouts/"+r.ID+"?status=failed")
	require.Equal(t, http.StatusOK, w.Code)
	body = assertPage(t, w)
	table := body[strings.Index(body, `id="platforms"`):]
	assert.Equal(t, 6, strings.Count(table, `<td class="status-failed">failed</td>`))
	assert.NotContains(t, table, "status-succeeded\">succeeded")
	assert.Contains(t, table, `<option value="failed" selected>failed (6)</option>`)
	assert.Contains(t, table, `href="/ui/changes/`+rollout.TaskID(r.ID, 0, p[0])+`"`)
	assert.NotContains(t, table, "Next page", "miniredis answers a scan whole")

	w = e.get(t, "/ui/rollouts/"+r.ID+"?status=succeeded")
	require.Equal(t, http.StatusOK, w.Code)
	body = w.Body.String()
	assert.Contains(t, body, p[6])
	assert.Contains(t, body, "<code>65316</code>", "the groups are the whole rollout's, whatever the table's filter")
}

func TestRolloutsCancelAndRetry(t *testing.T) {
	t.Parallel()
	e := newRoEnv(t, 4)
	ctx := context.Background()
	r := e.create(t, "to cancel", 4)
	e.finish(t, r.ID, 0, e.platforms[0], succeeded)

	w := e.post(t, "/ui/rollouts/"+r.ID+"/cancel", nil)
	require.Equal(t, http.StatusSeeOther, w.Code)
	loc := w.Header().Get("Location")
	assert.True(t, strings.HasPrefix(loc, "/ui/rollouts/"+r.ID+"?"), loc)
	got, err := e.svc.Get(ctx, r.ID)
	require.NoError(t, err)
	assert.Equal(t, rollout.StatusCanceled, got.Status)
	assert.Equal(t, 3, got.Counts.Canceled)
	body := assertPage(t, e.get(t, loc))
	assert.Contains(t, body, "Canceled: 3 platforms will not run; 0 running finish.")

	// Again: nothing to cancel, and the page says so.
	w = e.post(t, "/ui/rollouts/"+r.ID+"/cancel", nil)
	require.Equal(t, http.StatusSeeOther, w.Code)
	body = e.get(t, w.Header().Get("Location")).Body.String()
	assert.Contains(t, body, "Nothing to cancel: the rollout is already canceled.")

	// Retry runs the canceled platforms again, as attempt 1.
	w = e.post(t, "/ui/rollouts/"+r.ID+"/retry", nil)
	require.Equal(t, http.StatusSeeOther, w.Code)
	got, err = e.svc.Get(ctx, r.ID)
	require.NoError(t, err)
	assert.Equal(t, 1, got.Attempt)
	assert.Equal(t, rollout.Counts{Queued: 3, Succeeded: 1}, got.Counts)
	body = e.get(t, w.Header().Get("Location")).Body.String()
	assert.Contains(t, body, "Retrying: attempt 1 runs the failed and canceled platforms again.")

	// A rollout with nothing failed or canceled: nothing to retry.
	done := e.create(t, "all good", 2)
	e.finish(t, done.ID, 0, e.platforms[0], succeeded)
	e.finish(t, done.ID, 0, e.platforms[1], succeeded)
	w = e.post(t, "/ui/rollouts/"+done.ID+"/retry", nil)
	require.Equal(t, http.StatusSeeOther, w.Code)
	body = e.get(t, w.Header().Get("Location")).Body.String()
	assert.Contains(t, body, "Nothing to retry: no platform failed or was canceled.")
	got, err = e.svc.Get(ctx, done.ID)
	require.NoError(t, err)
	assert.Equal(t, 0, got.Attempt)

	// A notice is a code: text put in the URL is never shown.
	body = e.get(t, "/ui/rollouts/"+done.ID+"?notice=Your+session+expired").Body.String()
	assert.NotContains(t, body, "session expired")

	// State changes are POSTs from the console's own pages.
	req := httptest.NewRequest(http.MethodPost, "/ui/rollouts/"+done.ID+"/retry", nil)
	req.Header.Set("Sec-Fetch-Site", "cross-site")
	assert.Equal(t, http.StatusForbidden, e.send(req).Code)
	assert.Equal(t, http.StatusNotFound, e.get(t, "/ui/rollouts/"+done.ID+"/retry").Code)
}

// TestRolloutsResumeAFanOutLongUnderWay: a fan-out still under way long
// after the rollout was created is offered a resume (a retry).
func TestRolloutsResumeAFanOutLongUnderWay(t *testing.T) {
	t.Parallel()
	e := newRoEnv(t, 2, func(c *console.Config) { c.Now = func() time.Time { return time.Now().Add(time.Hour) } })
	r, err := e.svc.Create(context.Background(), rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"a.example.com"}, Platforms: e.platforms})
	require.NoError(t, err)
	body := assertPage(t, e.get(t, "/ui/rollouts/"+r.ID))
	assert.Contains(t, body, ">Resume the fan-out</button>")
	assert.NotContains(t, body, ">Retry failed</button>")
	w := e.post(t, "/ui/rollouts/"+r.ID+"/retry", nil)
	require.Equal(t, http.StatusSeeOther, w.Code)
	assert.Contains(t, e.get(t, w.Header().Get("Location")).Body.String(), "The fan-out of attempt 0 was queued again")
}

func TestRolloutsBadInput(t *testing.T) {
	t.Parallel()
	e := newRoEnv(t, 2)
	r := e.create(t, "x", 2)
	for _, tc := range []struct {
		method, path string
		status       int
		says         string
	}{
		{"GET", "/ui/rollouts/not-an-id", http.StatusNotFound, "is not a rollout id"},
		{"GET", "/ui/rollouts/ABCDEF0123456789", http.StatusNotFound, "is not a rollout id"},
		{"GET", "/ui/rollouts/0123456789abcdef", http.StatusNotFound, "no rollout with this id"},
		{"GET", "/ui/rollouts/0123456789abcdef/failures.csv", http.StatusNotFound, "no rollout with this id"},
		{"POST", "/ui/rollouts/zz/cancel", http.StatusNotFound, "is not a rollout id"},
		{"POST", "/ui/rollouts/0123456789abcdef/cancel", http.StatusNotFound, "no rollout with this id"},
		{"POST", "/ui/rollouts/0123456789abcdef/retry", http.StatusNotFound, "no rollout with this id"},
		{"GET", "/ui/rollouts/" + r.ID + "?status=bogus", http.StatusBadRequest, "status must be one of"},
		{"GET", "/ui/rollouts/" + r.ID + "?cursor=abc", http.StatusBadRequest, "cursor must be"},
	} {
		var w *httptest.ResponseRecorder
		if tc.method == "GET" {
			w = e.get(t, tc.path)
		} else {
			w = e.post(t, tc.path, nil)
		}
		assert.Equal(t, tc.status, w.Code, tc.path)
		body := assertPage(t, w)
		assert.Contains(t, body, tc.says, tc.path)
		assert.Contains(t, body, `class="error" role="alert"`, tc.path)
	}
}

func TestRolloutsNewFormShowsProblems(t *testing.T) {
	t.Parallel()
	e := newRoEnv(t, 2)
	w := e.get(t, "/ui/new")
	require.Equal(t, http.StatusOK, w.Code)
	body := assertPage(t, w)
	// Every field has its label.
	for _, id := range []string{"f-platforms", "f-action", "f-domains", "f-publish", "f-ensure", "f-preflight", "f-name"} {
		assert.Contains(t, body, `<label for="`+id+`"`, id)
		assert.Contains(t, body, `id="`+id+`"`, id)
	}
	assert.Contains(t, body, `<option value="add" selected>`)
	assert.Contains(t, body, `<option value="enforce">`)
	assert.Contains(t, body, `action="/ui/new/preview"`)

	// A bad appid: the form again, with the API's message beside it.
	w = e.post(t, "/ui/new/preview", url.Values{"platforms": {"wx123"}, "action": {"add"}, "domains": {"shop.example.com"}})
	assert.Equal(t, http.StatusUnprocessableEntity, w.Code)
	body = assertPage(t, w)
	assert.Contains(t, body, `platform &#34;wx123&#34;: is not a component appid`)
	assert.Contains(t, body, `value="wx123"`, "what was typed is kept")
	assert.Contains(t, body, `aria-invalid="true"`)
	assert.NotContains(t, body, `name="key"`, "no submit without a valid preview")

	// Invalid domains: each named, in the API's words.
	w = e.post(t, "/ui/new/preview", url.Values{"platforms": {e.platforms[0]}, "action": {"add"}, "domains": {"good.example.com\nnot a domain\nhttp://x.example.com/path"}})
	assert.Equal(t, http.StatusUnprocessableEntity, w.Code)
	body = assertPage(t, w)
	assert.Contains(t, body, `domains[1] &#34;not a domain&#34;: `)
	assert.Contains(t, body, `domains[2] &#34;http://x.example.com/path&#34;: `)
	assert.Contains(t, body, "good.example.com\nnot a domain\nhttp://x.example.com/path</textarea>")
	assert.Contains(t, body, `<p class="field-error">domains[1]`)

	// An appid this server does not know; a missing domain list; ensure with get.
	w = e.post(t, "/ui/new/preview", url.Values{"platforms": {"wx00000000000000ff"}, "action": {"delete"}})
	assert.Equal(t, http.StatusUnprocessableEntity, w.Code)
	body = w.Body.String()
	assert.Contains(t, body, "is not in the platforms file")
	assert.Contains(t, body, "domains: are required for delete")
	w = e.post(t, "/ui/new/preview", url.Values{"platforms": {e.platforms[0]}, "action": {"get"}, "ensure": {"on"}})
	assert.Equal(t, http.StatusUnprocessableEntity, w.Code)
	assert.Contains(t, w.Body.String(), "ensure: applies to set, add and delete, not get")

	// A rollout's problems come from the rollout service.
	w = e.post(t, "/ui/new/preview", url.Values{"platforms": {e.platforms[0] + ", wxnothex"}, "action": {"add"}, "domains": {"-bad-.example.com"}})
	assert.Equal(t, http.StatusUnprocessableEntity, w.Code)
	body = w.Body.String()
	assert.Contains(t, body, `platforms &#34;wxnothex&#34;: is not a component appid`)
	assert.Contains(t, body, `&#34;-bad-.example.com&#34;`)
	w = e.post(t, "/ui/new/preview", url.Values{"platforms": {"all, " + e.platforms[0]}, "action": {"add"}, "domains": {"a.example.com"}})
	assert.Equal(t, http.StatusUnprocessableEntity, w.Code)
	assert.Contains(t, w.Body.String(), "give a list of platforms or all, not both")

	// Submitting without a preview's key is refused, and nothing is queued.
	w = e.post(t, "/ui/new", url.Values{"platforms": {e.platforms[0]}, "action": {"add"}, "domains": {"a.example.com"}})
	assert.Equal(t, http.StatusBadRequest, w.Code)
	assert.Contains(t, w.Body.String(), "Preview first")
	n, err := e.rb.Client.Keys(context.Background(), e.rb.Prefix+"*").Result()
	require.NoError(t, err)
	assert.Empty(t, n, "nothing was written")
}

var roKeyField = regexp.MustCompile(`name="key" value="([^"]+)"`)

// submitPreview posts the preview page's hidden form as the browser would.
func submitPreview(t *testing.T, e *roEnv, preview string) *httptest.ResponseRecorder {
	t.Helper()
	start := strings.Index(preview, `<form method="post" action="/ui/new"`)
	require.GreaterOrEqual(t, start, 0, "the preview has a submit form")
	form := preview[start : start+strings.Index(preview[start:], "</form>")]
	vals := url.Values{}
	for _, m := range regexp.MustCompile(`<input type="hidden" name="([a-z]+)" value="([^"]*)">`).FindAllStringSubmatch(form, -1) {
		vals.Set(m[1], htmlUnescape(m[2]))
	}
	require.NotEmpty(t, vals.Get("key"))
	return e.post(t, "/ui/new", vals)
}

func htmlUnescape(s string) string {
	return strings.NewReplacer("&#34;", `"`, "&#39;", "'", "&amp;", "&", "&lt;", "<", "&gt;", ">").Replace(s)
}

func TestRolloutsPreviewThenSubmitAChange(t *testing.T) {
	t.Parallel()
	e := newRoEnv(t, 3)
	ctx := context.Background()
	w := e.post(t, "/ui/new/preview", url.Values{
		"platforms": {e.platforms[1]}, "action": {"add"}, "domains": {"Shop.Example.com\nshop2.example.com, shop.example.com"},
		"publish": {"on"}, "preflight": {"enforce"}, "name": {"ignored"},
	})
	require.Equal(t, http.StatusOK, w.Code)
	body := assertPage(t, w)
	assert.Contains(t, body, "Dry run: nothing has been changed yet")
	assert.Contains(t, body, "Add shop.example.com, shop2.example.com to the testing and the published (全网发布) lists.")
	assert.Contains(t, body, "Preflight enforce:")
	assert.Contains(t, body, "the name is not kept")
	assert.Contains(t, body, `<option value="enforce" selected>`, "the form below keeps the values")
	require.Len(t, roKeyField.FindAllStringSubmatch(body, -1), 1)
	keys, err := e.rb.Client.Keys(ctx, e.rb.Prefix+"record:*").Result()
	require.NoError(t, err)
	assert.Empty(t, keys, "a preview changes nothing")

	sub := submitPreview(t, e, body)
	require.Equal(t, http.StatusSeeOther, sub.Code, sub.Body.String())
	loc := sub.Header().Get("Location")
	require.True(t, strings.HasPrefix(loc, "/ui/changes/"), loc)
	rec, err := e.client.Get(ctx, strings.TrimPrefix(loc, "/ui/changes/"))
	require.NoError(t, err)
	assert.Equal(t, e.platforms[1], rec.Platform)
	assert.Equal(t, tasks.ActionAdd, rec.Action)
	assert.Equal(t, []string{"shop.example.com", "shop2.example.com"}, rec.Domains)
	assert.True(t, rec.Publish)
	assert.Equal(t, tasks.PreflightEnforce, rec.PreflightMode)

	// A double submit finds the first change.
	again := submitPreview(t, e, body)
	require.Equal(t, http.StatusSeeOther, again.Code)
	assert.Equal(t, loc, again.Header().Get("Location"))
	keys, err = e.rb.Client.Keys(ctx, e.rb.Prefix+"record:*").Result()
	require.NoError(t, err)
	assert.Len(t, keys, 1)

	// The same key with other values is a conflict, said in words.
	m := roKeyField.FindStringSubmatch(body)
	w = e.post(t, "/ui/new", url.Values{"platforms": {e.platforms[1]}, "action": {"delete"}, "domains": {"shop.example.com"}, "key": {m[1]}})
	assert.Equal(t, http.StatusConflict, w.Code)
	assert.Contains(t, w.Body.String(), "preview again")

	// A get needs no domains; its plan says it reads.
	w = e.post(t, "/ui/new/preview", url.Values{"platforms": {e.platforms[0]}, "action": {"get"}})
	require.Equal(t, http.StatusOK, w.Code)
	assert.Contains(t, w.Body.String(), "nothing is changed")
}

func TestRolloutsPreviewThenSubmitARolloutOf50(t *testing.T) {
	t.Parallel()
	e := newRoEnv(t, 60)
	ctx := context.Background()
	list := strings.Join(e.platforms[:50], ", ")
	w := e.post(t, "/ui/new/preview", url.Values{
		"platforms": {list}, "action": {"add"}, "domains": {"shop.example.com"}, "name": {"shop launch"}, "ensure": {"on"},
	})
	require.Equal(t, http.StatusOK, w.Code)
	body := assertPage(t, w)
	assert.Contains(t, body, "A rollout: add shop.example.com on 50 platforms, testing lists only")
	assert.Contains(t, body, "The calls (50)")
	assert.Contains(t, body, "would call add shop.example.com on "+e.platforms[49])
	assert.Contains(t, body, "ensure dry run: the current lists were not read", "the ensure plan's lines")
	assert.Contains(t, body, `named &#34;shop launch&#34;`)
	rs, err := e.svc.List(ctx, 10)
	require.NoError(t, err)
	assert.Empty(t, rs, "a dry run records nothing")

	sub := submitPreview(t, e, body)
	require.Equal(t, http.StatusSeeOther, sub.Code, sub.Body.String())
	loc := sub.Header().Get("Location")
	require.Regexp(t, `^/ui/rollouts/[0-9a-f]{16}\?notice=created$`, loc)
	id := strings.TrimPrefix(strings.Split(loc, "?")[0], "/ui/rollouts/")
	r, err := e.svc.Get(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, 50, r.Total)
	assert.Equal(t, "shop launch", r.Name)
	assert.Equal(t, rollout.ModeEnsure, r.Mode)
	page := assertPage(t, e.get(t, loc))
	assert.Contains(t, page, "Rollout created")
	assert.Contains(t, page, `<progress class="bar" max="50" value="0"`)

	// A double submit finds the same rollout.
	again := submitPreview(t, e, body)
	require.Equal(t, http.StatusSeeOther, again.Code)
	assert.Equal(t, "/ui/rollouts/"+id+"?notice=replayed", again.Header().Get("Location"))
	rs, err = e.svc.List(ctx, 10)
	require.NoError(t, err)
	assert.Len(t, rs, 1)

	// "all" is every configured platform.
	w = e.post(t, "/ui/new/preview", url.Values{"platforms": {"all"}, "action": {"delete"}, "domains": {"old.example.com"}, "publish": {"on"}})
	require.Equal(t, http.StatusOK, w.Code)
	body = w.Body.String()
	assert.Contains(t, body, "A rollout: delete old.example.com on all 60 configured platforms, testing and published lists.")
	assert.Contains(t, body, `<input type="hidden" name="platforms" value="all">`)
	assert.Contains(t, body, `<input type="hidden" name="publish" value="on">`)
	assert.Contains(t, body, "would call delete old.example.com on "+e.platforms[59], "all 60 calls listed")
}

func TestRolloutsFailuresCSV(t *testing.T) {
	t.Parallel()
	e := newRoEnv(t, 5)
	ctx := context.Background()
	r := e.create(t, "csv", 5)
	p := e.platforms
	e.finish(t, r.ID, 0, p[0], failedWith(65316, "reach limit", "limit, reached"))
	e.finish(t, r.ID, 0, p[1], failedWith(0, "=HYPERLINK(\"x\")", "no token"))
	e.finish(t, r.ID, 0, p[2], func(rec *tasks.Record) {
		succeeded(rec)
		rec.Preflight = map[string]string{"shop.example.com": tasks.PreflightMissing + "HTTP 404", "ok.example.com": tasks.PreflightOK}
	})
	_, err := e.svc.Cancel(ctx, r.ID) // p[3] and p[4]
	require.NoError(t, err)

	w := e.get(t, "/ui/rollouts/"+r.ID+"/failures.csv")
	require.Equal(t, http.StatusOK, w.Code)
	assert.Equal(t, "text/csv; charset=utf-8", w.Header().Get("Content-Type"))
	assert.Equal(t, `attachment; filename="rollout-`+r.ID+`-failures.csv"`, w.Header().Get("Content-Disposition"))
	rows, err := csv.NewReader(strings.NewReader(w.Body.String())).ReadAll()
	require.NoError(t, err)
	require.Len(t, rows, 6)
	assert.Equal(t, []string{"platform", "errcode", "errmsg", "reason", "task_id", "status", "preflight"}, rows[0])
	byApp := map[string][]string{}
	for _, row := range rows[1:] {
		byApp[row[0]] = row
	}
	assert.Equal(t, []string{p[0], "65316", "reach limit", "limit, reached", rollout.TaskID(r.ID, 0, p[0]), "failed", ""}, byApp[p[0]])
	assert.Equal(t, []string{p[1], "-", `'=HYPERLINK("x")`, "no token", rollout.TaskID(r.ID, 0, p[1]), "failed", ""}, byApp[p[1]], "a formula is kept text")
	assert.Equal(t, []string{p[2], "0", "ok", "", rollout.TaskID(r.ID, 0, p[2]), "succeeded", "shop.example.com: verification file missing: HTTP 404"}, byApp[p[2]])
	assert.Equal(t, "canceled", byApp[p[3]][5])
	assert.Equal(t, "canceled", byApp[p[4]][5])
	// Failed, then canceled, then the preflight failures.
	assert.Equal(t, p[2], rows[5][0])

	body := e.get(t, "/ui/rollouts/"+r.ID).Body.String()
	assert.Contains(t, body, `<b class="warn">1</b>preflight_failed`)
}

// TestRolloutsTablePagesOnRealRedis: a real Redis answers a large
// rollout's platforms a page at a time, and the page links the next.
func TestRolloutsTablePagesOnRealRedis(t *testing.T) {
	t.Parallel()
	e := newRoEnvOn(t, redistest.Real(t), 600)
	r, err := e.svc.Create(context.Background(), rollout.Spec{Action: tasks.ActionAdd, Domains: []string{"a.example.com"}, Platforms: e.platforms})
	require.NoError(t, err)
	seen := map[string]bool{}
	next := "/ui/rollouts/" + r.ID
	nextLink := regexp.MustCompile(`<a class="button secondary" href="([^"]+)" rel="next">Next page</a>`)
	for pages := 0; next != ""; pages++ {
		require.Less(t, pages, 50)
		w := e.get(t, next)
		require.Equal(t, http.StatusOK, w.Code)
		body := w.Body.String()
		for _, m := range regexp.MustCompile(`#p-(wx[0-9a-f]{16})"`).FindAllStringSubmatch(body, -1) {
			seen[m[1]] = true
		}
		if pages > 0 {
			assert.Contains(t, body, "First page")
		}
		next = ""
		if m := nextLink.FindStringSubmatch(body); m != nil {
			next, _, _ = strings.Cut(htmlUnescape(m[1]), "#") // a browser keeps the fragment
			if pages == 0 {
				assert.Less(t, strings.Count(body, `<td class="status-queued">`), 600, "the first page is a page")
			}
		}
	}
	assert.Len(t, seen, 600, "every platform on some page")
}

// BenchmarkRolloutPage500 renders the page of a 500-platform rollout:
// 100 failed with errcodes, 350 succeeded, 50 queued.
func BenchmarkRolloutPage500(b *testing.B) {
	e := newRoEnv(b, 500)
	r := e.create(b, "bench", 500)
	for i, p := range e.platforms {
		switch {
		case i < 100:
			e.finish(b, r.ID, 0, p, failedWith([]int{65316, -1, 61028, 0}[i%4], "errmsg", fmt.Sprintf("reason %d", i%7)))
		case i < 450:
			e.finish(b, r.ID, 0, p, succeeded)
		}
	}
	path := "/ui/rollouts/" + r.ID
	first := e.get(b, path)
	require.Equal(b, http.StatusOK, first.Code)
	require.Contains(b, first.Body.String(), "<code>65316</code>")
	size := 0
	for b.Loop() {
		w := e.get(b, path)
		if w.Code != http.StatusOK {
			b.Fatal(w.Code)
		}
		size = w.Body.Len()
	}
	b.ReportMetric(float64(size)/1024, "KiB/page")
}
