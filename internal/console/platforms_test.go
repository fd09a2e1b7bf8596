package console_test

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/wxdomain/wxdomain/internal/console"
	"github.com/wxdomain/wxdomain/internal/httpapi"
	"github.com/wxdomain/wxdomain/internal/pause"
	"github.com/wxdomain/wxdomain/internal/platform"
	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/internal/token"
	"github.com/wxdomain/wxdomain/tasks"
)

const (
	ptAppA  = "wx00000000000000a1"
	ptAppB  = "wx00000000000000b2"
	ptAppC  = "wx00000000000000c3"
	ptToken = "console-token"
)

// platformsEnv is the real router (the API's auth and same-origin rule
// around the console) over a miniredis.
type platformsEnv struct {
	factor   float64 // the pacing factor every platform reports
	srv      *httptest.Server
	rb       redistest.Bundle
	client   *tasks.Client
	rollouts *rollout.Service
	// statuses is what the Platforms func reports.
	statuses []platform.Status
}

func newPlatformsEnv(t *testing.T, statuses []platform.Status) *platformsEnv {
	t.Helper()
	rb := redistest.Mini(t)
	e := &platformsEnv{rb: rb, statuses: statuses, factor: 1}
	var appids []string
	for _, s := range statuses {
		appids = append(appids, s.AppID)
	}
	known := func(a string) bool {
		for _, x := range appids {
			if x == a {
				return true
			}
		}
		return false
	}
	rules := tasks.Rules{KnownPlatform: known}
	e.client = tasks.NewClient(rb.Client, tasks.ClientConfig{Prefix: rb.Prefix, Queue: rb.Queue, Rules: rules})
	t.Cleanup(func() { _ = e.client.Close() })
	e.rollouts = rollout.New(rb.Client, e.client, rollout.Config{
		Prefix: rb.Prefix, Queue: rb.Queue, BulkQueue: rb.Queue + "_bulk", Platforms: appids, Rules: rules,
	})
	t.Cleanup(func() { _ = e.rollouts.Close() })
	report := func(context.Context) ([]platform.Status, error) { return e.statuses, nil }
	ui := console.New(console.Config{
		Client: e.client, Rollouts: e.rollouts, Platforms: report, Lists: e.client.Store().PlatformLists,
		Meaning:        func(code int) string { return "meaning of " + strconv.Itoa(code) },
		MonitoringPath: "/monitoring", Queue: rb.Queue, BulkQueue: rb.Queue + "_bulk",
		Log: zaptest.NewLogger(t), DefaultRate: 5,
		Factors: func(_ context.Context, appids []string) (map[string]float64, error) {
			out := map[string]float64{}
			for _, a := range appids {
				out[a] = e.factor
			}
			return out, nil
		},
	})
	e.srv = httptest.NewServer(httpapi.New(httpapi.Config{
		Client: e.client, KnownPlatform: known, Platforms: report, Rollouts: e.rollouts,
		Console: ui, Tokens: []string{ptToken}, Log: zaptest.NewLogger(t),
	}))
	t.Cleanup(e.srv.Close)
	return e
}

type ptResponse struct {
	status int
	header http.Header
	body   string
}

// do sends a request as a logged-in browser, without following redirects.
func (e *platformsEnv) do(t *testing.T, method, path string) ptResponse {
	t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+path, nil)
	require.NoError(t, err)
	req.SetBasicAuth("operator", ptToken)
	if method == http.MethodPost {
		req.Header.Set("Origin", e.srv.URL)
		req.Header.Set("Sec-Fetch-Site", "same-origin")
	}
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := hc.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return ptResponse{resp.StatusCode, resp.Header, string(b)}
}

// seedLists stores a platform's last known lists as a change's answer
// would.
func (e *platformsEnv) seedLists(t *testing.T, appid string, testing []string, published *[]string, taskID string) {
	t.Helper()
	b, err := json.Marshal(tasks.PlatformLists{Testing: testing, Published: published, ReadAt: time.Now().Add(-5 * time.Minute), TaskID: taskID})
	require.NoError(t, err)
	require.NoError(t, e.rb.Client.Set(context.Background(), tasks.PlatformListsKey(e.rb.Prefix, appid), b, time.Hour).Err())
}

func ptList(s ...string) *[]string { return &s }

func threePlatforms() []platform.Status {
	now := time.Now().UTC()
	return []platform.Status{
		{AppID: ptAppA, Rate: 5, Token: tokenValid(now), Ticket: platform.TicketStatus{Stored: true, ReceivedAt: now.Add(-3 * time.Minute), AgeSeconds: 180}},
		{AppID: ptAppB, Ticket: platform.TicketStatus{}, Pause: &pause.Pause{Kind: pause.KindNoTicket, Reason: "no component_verify_ticket stored", Until: now.Add(9 * time.Minute), EndsWithTicket: true}},
		{AppID: ptAppC, Rate: 0.5, Ticket: platform.TicketStatus{Stored: true, ReceivedAt: now.Add(-2 * time.Hour)}},
	}
}

func tokenValid(now time.Time) token.Status {
	return token.Status{Valid: true, ExpiresAt: now.Add(90 * time.Minute), FetchedAt: now.Add(-30 * time.Minute), Generation: 3, FetchesToday: 2}
}

func TestPlatformsPageShowsStateListsAndActions(t *testing.T) {
	t.Parallel()
	e := newPlatformsEnv(t, threePlatforms())
	readBy := "0123456789abcdef0123456789abcdef"
	e.seedLists(t, ptAppA, []string{"a.example.com", "b.example.com"}, ptList("a.example.com"), readBy)
	e.seedLists(t, ptAppB, []string{"a.example.com"}, nil, readBy)

	r := e.do(t, http.MethodGet, "/ui/platforms")
	require.Equal(t, http.StatusOK, r.status, r.body)
	assert.Equal(t, "text/html; charset=utf-8", r.header.Get("Content-Type"))
	assert.Equal(t, "no-store", r.header.Get("Cache-Control"))
	for _, want := range []string{
		ptAppA, ptAppB, ptAppC,
		"valid", "none stored", "received",
		"no_ticket", "no component_verify_ticket stored", "or a new ticket",
		"5/s", "0.5/s", "default",
		"a.example.com", "b.example.com", "not released", "not read yet",
		`href="/ui/changes/` + readBy + `"`,
		`action="/ui/platforms/` + ptAppA + `/refresh"`,
		`action="/ui/platforms/` + ptAppB + `/resume"`,
		`action="/ui/platforms/refresh-all"`,
		`class="table-wrap"`,
	} {
		assert.Contains(t, r.body, want)
	}
	// Resume only where there is a pause.
	assert.NotContains(t, r.body, `action="/ui/platforms/`+ptAppA+`/resume"`)
	assert.NotContains(t, r.body, "No platform's lists have been read yet")
}

func TestPlatformsEmptyFleetAndNoListsSayWhatToDo(t *testing.T) {
	t.Parallel()
	t.Run("no platforms", func(t *testing.T) {
		t.Parallel()
		e := newPlatformsEnv(t, nil)
		for _, path := range []string{"/ui/platforms", "/ui/inventory"} {
			r := e.do(t, http.MethodGet, path)
			require.Equal(t, http.StatusOK, r.status, path)
			assert.Contains(t, r.body, "No platforms are configured", path)
			assert.Contains(t, r.body, "WXDOMAIN_PLATFORMS_FILE", path)
		}
		r := e.do(t, http.MethodGet, "/ui/inventory.csv")
		require.Equal(t, http.StatusOK, r.status)
		assert.Equal(t, "domain,platform,in_testing,in_published,read_at\n", r.body)
		// Refreshing nothing is refused with the rollout service's message.
		r = e.do(t, http.MethodPost, "/ui/platforms/refresh-all")
		assert.Equal(t, http.StatusUnprocessableEntity, r.status)
		assert.Contains(t, r.body, "list at least one platform")
	})
	t.Run("no lists read yet", func(t *testing.T) {
		t.Parallel()
		e := newPlatformsEnv(t, threePlatforms())
		for _, path := range []string{"/ui/platforms", "/ui/inventory"} {
			r := e.do(t, http.MethodGet, path)
			require.Equal(t, http.StatusOK, r.status, path)
			assert.Contains(t, r.body, "No platform's lists have been read yet", path)
			assert.Contains(t, r.body, `action="/ui/platforms/refresh-all"`, path)
		}
	})
}

// A path's appid or task id of the wrong form, or a platform not in the
// platforms file, gets the 404 page naming it; Redis hears nothing.
func TestPlatformsBadIDsAre404sBeforeRedis(t *testing.T) {
	t.Parallel()
	e := newPlatformsEnv(t, threePlatforms())
	unknown := "wx0000000000000999"
	cases := []struct{ method, path, names string }{
		{http.MethodPost, "/ui/platforms/wx12/refresh", `&#34;wx12&#34; is not a component appid`},
		{http.MethodPost, "/ui/platforms/_global/resume", `&#34;_global&#34; is not a component appid`},
		{http.MethodPost, "/ui/platforms/WX00000000000000A1/refresh", "WX00000000000000A1"},
		{http.MethodPost, "/ui/platforms/" + unknown + "/refresh", unknown + " is not in the platforms file"},
		{http.MethodPost, "/ui/platforms/" + unknown + "/resume", unknown + " is not in the platforms file"},
		{http.MethodGet, "/ui/changes/nope", `&#34;nope&#34; is not a task id`},
		{http.MethodGet, "/ui/changes/r_x:state/live", "is not a task id"},
		{http.MethodPost, "/ui/changes/" + strings.Repeat("z", 32) + "/cancel", "is not a task id"},
		{http.MethodGet, "/ui/changes/" + url.PathEscape("<script>"), "&lt;script&gt;"},
	}
	for _, c := range cases {
		before := e.rb.Mini.CommandCount()
		r := e.do(t, c.method, c.path)
		assert.Equal(t, http.StatusNotFound, r.status, c.path)
		assert.Contains(t, r.body, c.names, c.path)
		assert.NotContains(t, r.body, "<script>", c.path)
		assert.NotContains(t, r.body, "goroutine", c.path)
		assert.Equal(t, before, e.rb.Mini.CommandCount(), "%s %s reached Redis", c.method, c.path)
	}
	assert.Empty(t, e.rb.Mini.Keys())

	// A task id of the right form with no record: 404, said so.
	r := e.do(t, http.MethodGet, "/ui/changes/"+strings.Repeat("a", 32))
	assert.Equal(t, http.StatusNotFound, r.status)
	assert.Contains(t, r.body, "never submitted, or its record expired")
}

func TestPlatformsRefreshResumeAndRefreshAll(t *testing.T) {
	t.Parallel()
	e := newPlatformsEnv(t, threePlatforms())
	ctx := context.Background()

	// Refresh: a get change for the platform, then its page.
	r := e.do(t, http.MethodPost, "/ui/platforms/"+ptAppA+"/refresh")
	require.Equal(t, http.StatusSeeOther, r.status, r.body)
	loc, err := url.Parse(r.header.Get("Location"))
	require.NoError(t, err)
	id, ok := strings.CutPrefix(loc.Path, "/ui/changes/")
	require.True(t, ok, loc.String())
	rec, err := e.client.Get(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, tasks.ActionGet, rec.Action)
	assert.Equal(t, ptAppA, rec.Platform)
	assert.Equal(t, tasks.StatusQueued, rec.Status)
	ins := asynq.NewInspectorFromRedisClient(e.rb.Client)
	_, err = ins.GetTaskInfo(e.rb.Queue, id)
	require.NoError(t, err, "the change is on the queue")

	page := e.do(t, http.MethodGet, loc.String())
	require.Equal(t, http.StatusOK, page.status, page.body)
	for _, want := range []string{
		"A get change was queued", ptAppA, "queued", `data-poll="/ui/changes/` + id + `/live"`,
		`action="/ui/changes/` + id + `/cancel"`,
		`href="/monitoring/queues/` + e.rb.Queue + `/tasks/` + id + `"`,
	} {
		assert.Contains(t, page.body, want)
	}
	assert.NotContains(t, page.body, `data-done="true"`)
	live := e.do(t, http.MethodGet, "/ui/changes/"+id+"/live")
	require.Equal(t, http.StatusOK, live.status)
	assert.True(t, strings.HasPrefix(live.body, `<section class="change" data-poll="/ui/changes/`+id+`/live"`), live.body)
	assert.NotContains(t, live.body, "<html")

	// Cancel: 303 back, the change canceled and its page done.
	r = e.do(t, http.MethodPost, "/ui/changes/"+id+"/cancel")
	require.Equal(t, http.StatusSeeOther, r.status, r.body)
	assert.Equal(t, "/ui/changes/"+id+"?done=canceled", r.header.Get("Location"))
	rec, err = e.client.Get(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, tasks.StatusCanceled, rec.Status)
	page = e.do(t, http.MethodGet, "/ui/changes/"+id+"?done=canceled")
	assert.Contains(t, page.body, `data-done="true"`)
	assert.Contains(t, page.body, "Canceled.")
	assert.NotContains(t, page.body, "/cancel\"")
	r = e.do(t, http.MethodPost, "/ui/changes/"+id+"/cancel")
	require.Equal(t, http.StatusSeeOther, r.status)
	assert.Equal(t, "/ui/changes/"+id+"?done=already-final", r.header.Get("Location"))

	// Resume: the pause ends; a platform not paused says so.
	pauses := pause.NewStore(e.rb.Client, e.rb.Prefix)
	_, err = pauses.Set(ctx, ptAppB, pause.Pause{Kind: pause.KindDailyQuota, Reason: "daily quota used up", ErrCode: 45009, Until: time.Now().Add(time.Hour)})
	require.NoError(t, err)
	r = e.do(t, http.MethodPost, "/ui/platforms/"+ptAppB+"/resume")
	require.Equal(t, http.StatusSeeOther, r.status, r.body)
	loc, err = url.Parse(r.header.Get("Location"))
	require.NoError(t, err)
	assert.Equal(t, "/ui/platforms", loc.Path)
	assert.Equal(t, "resumed", loc.Query().Get("done"))
	_, paused, err := pauses.Get(ctx, ptAppB)
	require.NoError(t, err)
	assert.False(t, paused)
	page = e.do(t, http.MethodGet, loc.String())
	assert.Contains(t, page.body, ptAppB+" resumed: its pause ended and 0 waiting change(s) run now.")
	r = e.do(t, http.MethodPost, "/ui/platforms/"+ptAppB+"/resume")
	assert.Contains(t, r.header.Get("Location"), "done=not-paused")
	// The notice comes from fixed texts only.
	page = e.do(t, http.MethodGet, "/ui/platforms?done=owned&appid="+ptAppB)
	assert.NotContains(t, page.body, "owned")

	// Refresh all: a get rollout over every platform.
	r = e.do(t, http.MethodPost, "/ui/platforms/refresh-all")
	require.Equal(t, http.StatusSeeOther, r.status, r.body)
	rid, ok := strings.CutPrefix(r.header.Get("Location"), "/ui/rollouts/")
	require.True(t, ok, r.header.Get("Location"))
	ro, err := e.rollouts.Get(ctx, rid)
	require.NoError(t, err)
	assert.Equal(t, tasks.ActionGet, ro.Action)
	assert.Equal(t, 3, ro.Total)
}

// A change's page shows its answer explained, its preflight and its
// timeline; its lists then show on the platforms page, linked to it.
func TestChangePageTimelineAndLists(t *testing.T) {
	t.Parallel()
	e := newPlatformsEnv(t, threePlatforms())
	ctx := context.Background()
	rec, err := e.client.Enqueue(ctx, tasks.JumpDomainChange{Platform: ptAppC, Action: tasks.ActionAdd, Domains: []string{"new.example.com", "bad.example.com"}, Publish: true}, tasks.EnqueueOptions{})
	require.NoError(t, err)
	id := rec.TaskID
	store := e.client.Store()
	code := -1
	next := time.Now().Add(30 * time.Second)
	_, err = store.Update(ctx, id, func(r *tasks.Record) error {
		r.Status, r.Attempts, r.ErrCode, r.ErrMsg, r.Error, r.NextAttemptAt = tasks.StatusRetrying, 1, &code, "system busy", "WeChat is busy; retrying", &next
		r.Preflight = map[string]string{"new.example.com": tasks.PreflightOK, "bad.example.com": tasks.PreflightMissing + "404"}
		return nil
	})
	require.NoError(t, err)
	page := e.do(t, http.MethodGet, "/ui/changes/"+id)
	require.Equal(t, http.StatusOK, page.status, page.body)
	for _, want := range []string{
		"retrying", "meaning of -1", "system busy", "WeChat is busy; retrying",
		"new.example.com", "verification file missing: 404", "Timeline", "queued", "Next attempt",
	} {
		assert.Contains(t, page.body, want)
	}

	ok := 0
	_, err = store.Update(ctx, id, func(r *tasks.Record) error {
		r.Status, r.Attempts, r.ErrCode, r.Error = tasks.StatusSucceeded, 2, &ok, ""
		r.TestingDomains, r.PublishedDomains = ptList("new.example.com"), ptList("new.example.com", "old.example.com")
		return nil
	})
	require.NoError(t, err)
	page = e.do(t, http.MethodGet, "/ui/changes/"+id)
	assert.Contains(t, page.body, `data-done="true"`)
	assert.Contains(t, page.body, "Lists after the change")
	assert.Contains(t, page.body, "old.example.com")
	assert.NotContains(t, page.body, "Cancel this change")

	plat := e.do(t, http.MethodGet, "/ui/platforms")
	assert.Contains(t, plat.body, `href="/ui/changes/`+id+`"`)
	inv := e.do(t, http.MethodGet, "/ui/inventory?drift=1")
	assert.Contains(t, inv.body, "old.example.com")
	assert.NotContains(t, inv.body, ">new.example.com<")
}

func TestInventoryDriftAndCSV(t *testing.T) {
	t.Parallel()
	e := newPlatformsEnv(t, threePlatforms())
	e.seedLists(t, ptAppA, []string{"a.example.com", "b.example.com"}, ptList("a.example.com"), "0123456789abcdef0123456789abcdef")
	e.seedLists(t, ptAppB, []string{"a.example.com"}, nil, "0123456789abcdef0123456789abcde0") // never released: no drift
	e.seedLists(t, ptAppC, []string{"c.example.com"}, ptList("c.example.com", "d.example.com"), "0123456789abcdef0123456789abcde1")

	r := e.do(t, http.MethodGet, "/ui/inventory")
	require.Equal(t, http.StatusOK, r.status, r.body)
	for _, d := range []string{"a.example.com", "b.example.com", "c.example.com", "d.example.com"} {
		assert.Contains(t, r.body, ">"+d+"<")
	}
	assert.Contains(t, r.body, `<label for="drift">`)
	assert.Contains(t, r.body, "only in testing on")
	assert.Contains(t, r.body, "only in published on")
	assert.Contains(t, r.body, "1 never released")

	r = e.do(t, http.MethodGet, "/ui/inventory?drift=1")
	require.Equal(t, http.StatusOK, r.status)
	assert.Contains(t, r.body, ">b.example.com<")
	assert.Contains(t, r.body, ">d.example.com<")
	assert.NotContains(t, r.body, ">a.example.com<")
	assert.NotContains(t, r.body, ">c.example.com<")
	assert.Contains(t, r.body, `href="/ui/inventory.csv?drift=1"`)

	r = e.do(t, http.MethodGet, "/ui/inventory.csv")
	require.Equal(t, http.StatusOK, r.status)
	assert.Equal(t, "text/csv; charset=utf-8", r.header.Get("Content-Type"))
	assert.True(t, strings.HasPrefix(r.header.Get("Content-Disposition"), `attachment; filename="wxdomain-domains-`), r.header.Get("Content-Disposition"))
	rows, err := csv.NewReader(strings.NewReader(r.body)).ReadAll()
	require.NoError(t, err)
	var got []string
	for _, row := range rows {
		require.Len(t, row, 5)
		if row[0] != "domain" {
			_, err := time.Parse(time.RFC3339, row[4])
			assert.NoError(t, err, "read_at %q", row[4])
		}
		got = append(got, strings.Join(row[:4], ","))
	}
	assert.Equal(t, []string{
		"domain,platform,in_testing,in_published",
		"a.example.com," + ptAppA + ",true,true",
		"a.example.com," + ptAppB + ",true,",
		"b.example.com," + ptAppA + ",true,false",
		"c.example.com," + ptAppC + ",true,true",
		"d.example.com," + ptAppC + ",false,true",
	}, got)

	r = e.do(t, http.MethodGet, "/ui/inventory.csv?drift=1")
	rows, err = csv.NewReader(strings.NewReader(r.body)).ReadAll()
	require.NoError(t, err)
	require.Len(t, rows, 3)
	assert.Equal(t, []string{"b.example.com", ptAppA, "true", "false"}, rows[1][:4])
	assert.Equal(t, []string{"d.example.com", ptAppC, "false", "true"}, rows[2][:4])
}

// BenchmarkPlatformsPage500 renders the platforms page, the inventory and
// its CSV for 500 platforms with lists (20 to 40 domains each, most
// shared).
func BenchmarkPlatformsPage500(b *testing.B) {
	now := time.Now().UTC()
	var statuses []platform.Status
	lists := map[string]tasks.PlatformLists{}
	for i := range 500 {
		appid := fmt.Sprintf("wx%016x", i+1)
		st := platform.Status{AppID: appid, Rate: float64(i % 7), Ticket: platform.TicketStatus{Stored: i%10 != 0, ReceivedAt: now.Add(-time.Duration(i) * time.Second)}}
		if i%25 == 0 {
			st.Pause = &pause.Pause{Kind: pause.KindMinuteLimit, Reason: "per-minute limit", ErrCode: 45011, Until: now.Add(time.Minute)}
		}
		statuses = append(statuses, st)
		var testing, published []string
		for d := range 20 + i%20 {
			testing = append(testing, fmt.Sprintf("shared%d.example.com", d))
		}
		testing = append(testing, fmt.Sprintf("own%d.example.com", i))
		published = append(published, testing[:len(testing)-2]...)
		lists[appid] = tasks.PlatformLists{Testing: testing, Published: &published, ReadAt: now.Add(-time.Hour), TaskID: fmt.Sprintf("%032x", i)}
	}
	c := console.New(console.Config{
		Platforms: func(context.Context) ([]platform.Status, error) { return statuses, nil },
		Lists: func(_ context.Context, appids []string) (map[string]tasks.PlatformLists, error) {
			return lists, nil
		},
	})
	for _, path := range []string{"/ui/platforms", "/ui/inventory", "/ui/inventory?drift=1", "/ui/inventory.csv"} {
		b.Run(strings.TrimPrefix(path, "/ui/"), func(b *testing.B) {
			size := 0
			for b.Loop() {
				w := httptest.NewRecorder()
				c.ServeHTTP(w, httptest.NewRequest(http.MethodGet, path, nil))
				if w.Code != http.StatusOK {
					b.Fatalf("%s: %d %s", path, w.Code, w.Body.String())
				}
				size = w.Body.Len()
			}
			b.ReportMetric(float64(size)/1024, "KiB/page")
		})
	}
}

// The rate a platform runs at now shows beside its configured one while
// busy answers slow it.
func TestPlatformsShowTheEffectiveRate(t *testing.T) {
	t.Parallel()
	e := newPlatformsEnv(t, threePlatforms())
	r := e.do(t, "GET", "/ui/platforms")
	assert.NotContains(t, r.body, "busy pacing)")
	e.factor = 0.5
	r = e.do(t, "GET", "/ui/platforms")
	assert.Contains(t, r.body, "5/s (now 2.50/s, busy pacing)")
	assert.Contains(t, r.body, "0.5/s (now 0.25/s, busy pacing)")
}
