package console

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/wxdomain/wxdomain/internal/platform"
	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/tasks"
)

// platformRoutes serves the platforms, domain inventory and change pages.
func (c *Console) platformRoutes() {
	c.mux.HandleFunc("GET /ui/platforms", c.platformsPage)
	c.mux.HandleFunc("POST /ui/platforms/refresh-all", c.platformsRefreshAll)
	c.mux.HandleFunc("POST /ui/platforms/{appid}/refresh", c.platformRefresh)
	c.mux.HandleFunc("POST /ui/platforms/{appid}/resume", c.platformResume)
	c.mux.HandleFunc("GET /ui/inventory", c.inventoryPage)
	c.mux.HandleFunc("GET /ui/inventory.csv", c.inventoryCSV)
	c.mux.HandleFunc("GET /ui/changes/{id}", c.changePage)
	c.mux.HandleFunc("GET /ui/changes/{id}/live", c.changeLive)
	c.mux.HandleFunc("POST /ui/changes/{id}/cancel", c.changeCancel)
}

// platformsView is the platforms page.
type platformsView struct {
	Flash string
	Rows  []platformRow
	// Counts for the cards.
	Total, Paused, NoTicket, NoToken, ListsKnown int
	// CanRefreshAll is false when the server has no rollout service.
	CanRefreshAll bool
}

type platformRow struct {
	AppID                  string
	Token, TokenClass      string
	TokenDetail            string
	Ticket, TicketClass    string
	TicketAt               moment
	Pause                  *pauseView
	Rate                   string
	Lists                  *listsView
	RefreshLabel, ResumeAt string
}

type pauseView struct {
	Kind, Reason   string
	ErrCode        int
	Until          moment
	EndsWithTicket bool
}

// listsView is a platform's last known lists.
type listsView struct {
	Testing, Published domainLines
	// Released is false when WeChat left the published list out (a
	// platform never released).
	Released bool
	ReadAt   moment
	TaskID   string
}

// domainLines is a list of domains as one text, a line each: a page
// of 500 platforms escapes one string per list, not one per domain.
type domainLines struct {
	N    int
	Text string
}

func linesOf(domains []string) domainLines {
	return domainLines{N: len(domains), Text: strings.Join(domains, "\n")}
}

// moment is a time as a page shows it.
type moment struct {
	// ISO is for <time datetime>, Text the UTC time, Rel "5m ago" or
	// "in 3m".
	ISO, Text, Rel string
}

// momentOf formats t against the console's clock; the zero time is "".
func (c *Console) momentOf(t time.Time) moment {
	if t.IsZero() {
		return moment{}
	}
	t = t.UTC()
	m := moment{ISO: t.Format(time.RFC3339), Text: t.Format("2006-01-02 15:04:05 UTC")}
	if d := c.cfg.Now().Sub(t); d >= 0 {
		m.Rel = spanText(d) + " ago"
	} else {
		m.Rel = "in " + spanText(-d)
	}
	return m
}

// spanText is a duration in at most two units: 42s, 12m, 5h12m, 3d4h.
func spanText(d time.Duration) string {
	d = d.Round(time.Second)
	switch {
	case d < time.Minute:
		return strconv.Itoa(int(d/time.Second)) + "s"
	case d < time.Hour:
		return strconv.Itoa(int(d/time.Minute)) + "m"
	case d < 48*time.Hour:
		h, m := int(d/time.Hour), int(d%time.Hour/time.Minute)
		if m == 0 {
			return strconv.Itoa(h) + "h"
		}
		return fmt.Sprintf("%dh%dm", h, m)
	default:
		days, h := int(d/(24*time.Hour)), int(d%(24*time.Hour)/time.Hour)
		if h == 0 {
			return strconv.Itoa(days) + "d"
		}
		return fmt.Sprintf("%dd%dh", days, h)
	}
}

// fleet reads the configured platforms' states, in the platforms file's
// order.
func (c *Console) fleet(ctx context.Context) ([]platform.Status, error) {
	if c.cfg.Platforms == nil {
		return nil, nil
	}
	return c.cfg.Platforms(ctx)
}

// fleetLists reads the last known lists of the platforms; nil Lists
// knows none.
func (c *Console) fleetLists(ctx context.Context, appids []string) (map[string]tasks.PlatformLists, error) {
	if c.cfg.Lists == nil || len(appids) == 0 {
		return map[string]tasks.PlatformLists{}, nil
	}
	return c.cfg.Lists(ctx, appids)
}

// platformKnown checks a path's appid: its form first, before anything
// reads Redis, then that the platforms file has it. It answers the 404
// page and returns false for either problem.
func (c *Console) platformKnown(w http.ResponseWriter, r *http.Request, appid string) bool {
	if !tasks.ValidAppID(appid) {
		c.fail(w, http.StatusNotFound, fmt.Sprintf("no such platform: %q is not a component appid (want %s)", tasks.Truncate(appid), tasks.AppIDForm))
		return false
	}
	if c.cfg.KnownPlatform != nil {
		if c.cfg.KnownPlatform(appid) {
			return true
		}
		c.fail(w, http.StatusNotFound, "no such platform: "+appid+" is not in the platforms file")
		return false
	}
	list, err := c.fleet(r.Context())
	if err != nil {
		c.opFailed(w, r, err)
		return false
	}
	for _, p := range list {
		if p.AppID == appid {
			return true
		}
	}
	c.fail(w, http.StatusNotFound, "no such platform: "+appid+" is not in the platforms file")
	return false
}

// opFailed shows the error page for a service's error, with the message
// the HTTP API gives for it; an unexpected error is logged and shown as
// an internal error, never with its internals.
func (c *Console) opFailed(w http.ResponseWriter, r *http.Request, err error) {
	var ve *tasks.ValidationError
	switch {
	case errors.As(err, &ve):
		c.fail(w, http.StatusUnprocessableEntity, ve.Error())
	case errors.Is(err, tasks.ErrTaskNotFound):
		c.fail(w, http.StatusNotFound, "no change with this task id (or its record expired)")
	case errors.Is(err, rollout.ErrNotFound):
		c.fail(w, http.StatusNotFound, "no rollout with this id (or it expired)")
	case errors.Is(err, tasks.ErrUnconfirmed):
		c.fail(w, http.StatusServiceUnavailable, err.Error()+"; try again")
	case tasks.RedisUnavailable(err):
		c.fail(w, http.StatusServiceUnavailable, "Redis does not answer for the moment (a failover?); try again")
	case errors.Is(err, context.Canceled):
		// The browser went away; nobody reads the answer.
	default:
		c.cfg.Log.Error("console request failed", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
		c.fail(w, http.StatusInternalServerError, "internal error; see the server log")
	}
}

func (c *Console) platformsPage(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	list, err := c.fleet(ctx)
	if err != nil {
		c.opFailed(w, r, err)
		return
	}
	appids := make([]string, len(list))
	for i, p := range list {
		appids[i] = p.AppID
	}
	lists, err := c.fleetLists(ctx, appids)
	if err != nil {
		c.opFailed(w, r, err)
		return
	}
	factors := map[string]float64{}
	if c.cfg.Factors != nil {
		if factors, err = c.cfg.Factors(ctx, appids); err != nil {
			c.opFailed(w, r, err)
			return
		}
	}
	v := platformsView{Total: len(list), CanRefreshAll: c.cfg.Rollouts != nil, Flash: platformsFlash(r.URL.Query())}
	v.Rows = make([]platformRow, 0, len(list))
	for _, p := range list {
		row := c.platformRow(p)
		if f, ok := factors[p.AppID]; ok && f < 1 {
			// Busy answers slow the platform: the rate it runs at now.
			rate := p.Rate
			if rate <= 0 {
				rate = c.cfg.DefaultRate
			}
			if rate > 0 {
				row.Rate += " (now " + strconv.FormatFloat(rate*f, 'f', 2, 64) + "/s, busy pacing)"
			}
		}
		if l, ok := lists[p.AppID]; ok {
			row.Lists = &listsView{Testing: linesOf(l.Testing), ReadAt: c.momentOf(l.ReadAt), TaskID: l.TaskID}
			if l.Published != nil {
				row.Lists.Published, row.Lists.Released = linesOf(*l.Published), true
			}
			v.ListsKnown++
		}
		if row.Pause != nil {
			v.Paused++
		}
		if !p.Ticket.Stored {
			v.NoTicket++
		}
		if !p.Token.Valid {
			v.NoToken++
		}
		v.Rows = append(v.Rows, row)
	}
	c.render(w, http.StatusOK, "platforms.html", page{Title: "Platforms", Nav: "platforms", Data: v})
}

func (c *Console) platformRow(p platform.Status) platformRow {
	row := platformRow{AppID: p.AppID, Rate: "default", RefreshLabel: "Refresh the lists of " + p.AppID, ResumeAt: "Resume " + p.AppID}
	if p.Rate <= 0 && c.cfg.DefaultRate > 0 {
		row.Rate = strconv.FormatFloat(c.cfg.DefaultRate, 'f', -1, 64) + "/s (default)"
	}
	if p.Rate > 0 {
		row.Rate = strconv.FormatFloat(p.Rate, 'f', -1, 64) + "/s"
	}
	switch {
	case p.Token.Valid:
		row.Token, row.TokenClass = "valid", "ok"
		row.TokenDetail = "expires " + c.momentOf(p.Token.ExpiresAt).Rel
	case !p.Token.FetchedAt.IsZero():
		row.Token, row.TokenClass = "expired", "warn"
		row.TokenDetail = "fetched " + c.momentOf(p.Token.FetchedAt).Rel
	default:
		row.Token, row.TokenClass = "none yet", "note"
		row.TokenDetail = "fetched on the first call"
	}
	row.TokenDetail += fmt.Sprintf("; %d fetches today", p.Token.FetchesToday)
	if p.Ticket.Stored {
		at := p.Ticket.ReceivedAt
		if at.IsZero() {
			at = c.cfg.Now().Add(-time.Duration(p.Ticket.AgeSeconds) * time.Second)
		}
		row.Ticket, row.TicketAt = "stored", c.momentOf(at)
	} else {
		row.Ticket, row.TicketClass = "none stored", "bad"
	}
	if z := p.Pause; z != nil {
		row.Pause = &pauseView{Kind: string(z.Kind), Reason: z.Reason, ErrCode: z.ErrCode, Until: c.momentOf(z.Until), EndsWithTicket: z.EndsWithTicket}
	}
	return row
}

// platformsFlash is the notice after a post, from fixed texts: the query
// string cannot put words of its own on the page.
func platformsFlash(q url.Values) string {
	appid := q.Get("appid")
	if !tasks.ValidAppID(appid) {
		return ""
	}
	switch q.Get("done") {
	case "resumed":
		n, _ := strconv.Atoi(q.Get("n"))
		return fmt.Sprintf("%s resumed: its pause ended and %d waiting change(s) run now.", appid, max(n, 0))
	case "not-paused":
		return appid + " was not paused; nothing to resume."
	}
	return ""
}

func (c *Console) platformResume(w http.ResponseWriter, r *http.Request) {
	appid := r.PathValue("appid")
	if !c.platformKnown(w, r, appid) {
		return
	}
	res, err := c.cfg.Client.Resume(r.Context(), appid)
	if err != nil {
		c.opFailed(w, r, err)
		return
	}
	fields := []zap.Field{zap.String("platform", appid), zap.String("remote_addr", r.RemoteAddr), zap.Int("resumed_changes", res.ResumedChanges)}
	q := url.Values{"appid": {appid}}
	if p := res.EndedPause; p != nil {
		fields = append(fields, zap.String("pause_kind", string(p.Kind)), zap.Time("pause_until", p.Until), zap.String("pause_reason", p.Reason))
		q.Set("done", "resumed")
		q.Set("n", strconv.Itoa(res.ResumedChanges))
	} else {
		q.Set("done", "not-paused")
	}
	c.cfg.Log.Info("platform resumed by an operator (console)", fields...)
	http.Redirect(w, r, "/ui/platforms?"+q.Encode(), http.StatusSeeOther)
}

func (c *Console) platformRefresh(w http.ResponseWriter, r *http.Request) {
	appid := r.PathValue("appid")
	if !c.platformKnown(w, r, appid) {
		return
	}
	rec, err := c.cfg.Client.Enqueue(r.Context(), tasks.JumpDomainChange{Platform: appid, Action: tasks.ActionGet}, tasks.EnqueueOptions{})
	if err != nil {
		c.opFailed(w, r, err)
		return
	}
	http.Redirect(w, r, "/ui/changes/"+rec.TaskID+"?done=refresh", http.StatusSeeOther)
}

func (c *Console) platformsRefreshAll(w http.ResponseWriter, r *http.Request) {
	if c.cfg.Rollouts == nil {
		c.fail(w, http.StatusServiceUnavailable, "this server has no rollout service, so it cannot refresh every platform at once; refresh them one by one")
		return
	}
	ro, err := c.cfg.Rollouts.Create(r.Context(), rollout.Spec{Name: "refresh lists (console)", Action: tasks.ActionGet, All: true})
	if err != nil {
		c.opFailed(w, r, err)
		return
	}
	http.Redirect(w, r, "/ui/rollouts/"+ro.ID, http.StatusSeeOther)
}
