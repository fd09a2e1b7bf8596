package console

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strings"

	"go.uber.org/zap"

	"github.com/wxdomain/wxdomain/tasks"
)

// changeView is a change's page; its Live part is also the fragment the
// page polls until the change is final.
type changeView struct {
	Flash string
	Live  changeLive
}

type changeLive struct {
	Rec   *tasks.Record
	Final bool
	// Poll is the fragment's own address.
	Poll                       string
	ErrCode                    *codeView
	Created, Updated, Finished moment
	NextAttempt, Reserved      moment
	Events                     []eventRow
	Preflight                  []preflightRow
	PreflightFailed            bool
	TaskLink, QueueLink        string
	// Testing and Published are the lists WeChat answered with; HasLists
	// is false before an answer, Released false when WeChat left the
	// published list out.
	Testing, Published []string
	HasLists, Released bool
}

// codeView is a WeChat errcode and what it means.
type codeView struct {
	Code    int
	Meaning string
}

type eventRow struct {
	At      moment
	Status  string
	Attempt int
	ErrCode *codeView
	Detail  string
	Next    moment
}

type preflightRow struct {
	Domain, Finding string
	OK              bool
}

// changeID checks a path's task id before anything reads Redis, and
// answers the 404 page for one of the wrong form.
func (c *Console) changeID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	if !tasks.ValidTaskID(id) {
		c.fail(w, http.StatusNotFound, fmt.Sprintf("no such change: %q is not a task id", tasks.Truncate(id)))
		return "", false
	}
	return id, true
}

// readChange reads a change's record for its page; false when an error
// page was answered.
func (c *Console) readChange(w http.ResponseWriter, r *http.Request) (changeLive, bool) {
	id, ok := c.changeID(w, r)
	if !ok {
		return changeLive{}, false
	}
	rec, err := c.cfg.Client.Get(r.Context(), id)
	if errors.Is(err, tasks.ErrTaskNotFound) {
		c.fail(w, http.StatusNotFound, "no change "+id+" (never submitted, or its record expired)")
		return changeLive{}, false
	}
	if err != nil {
		c.opFailed(w, r, err)
		return changeLive{}, false
	}
	return c.changeLiveOf(rec), true
}

func (c *Console) codeOf(p *int) *codeView {
	if p == nil {
		return nil
	}
	v := &codeView{Code: *p}
	if c.cfg.Meaning != nil {
		v.Meaning = c.cfg.Meaning(*p)
	}
	return v
}

func (c *Console) changeLiveOf(rec *tasks.Record) changeLive {
	v := changeLive{
		Rec: rec, Final: rec.Status.Final(), Poll: "/ui/changes/" + rec.TaskID + "/live",
		ErrCode: c.codeOf(rec.ErrCode), Created: c.momentOf(rec.CreatedAt), Updated: c.momentOf(rec.UpdatedAt),
		PreflightFailed: rec.PreflightFailed(),
	}
	if rec.TestingDomains != nil {
		v.Testing, v.HasLists = *rec.TestingDomains, true
	}
	if rec.PublishedDomains != nil {
		v.Published, v.Released = *rec.PublishedDomains, true
	}
	if rec.FinishedAt != nil {
		v.Finished = c.momentOf(*rec.FinishedAt)
	}
	if rec.NextAttemptAt != nil {
		v.NextAttempt = c.momentOf(*rec.NextAttemptAt)
	}
	if rec.ReservedSlot != nil && !v.Final {
		v.Reserved = c.momentOf(*rec.ReservedSlot)
	}
	v.Events = make([]eventRow, 0, len(rec.Events))
	for _, e := range rec.Events {
		row := eventRow{At: c.momentOf(e.At), Status: string(e.Status), Attempt: e.Attempt, ErrCode: c.codeOf(e.ErrCode), Detail: e.Detail}
		if e.NextAttemptAt != nil {
			row.Next = c.momentOf(*e.NextAttemptAt)
		}
		v.Events = append(v.Events, row)
	}
	for d, f := range rec.Preflight {
		v.Preflight = append(v.Preflight, preflightRow{Domain: d, Finding: f, OK: f == tasks.PreflightOK})
	}
	sort.Slice(v.Preflight, func(i, j int) bool { return v.Preflight[i].Domain < v.Preflight[j].Domain })
	if p := strings.TrimRight(c.cfg.MonitoringPath, "/"); c.cfg.MonitoringPath != "" && rec.Queue != "" {
		v.QueueLink = p + "/queues/" + url.PathEscape(rec.Queue)
		v.TaskLink = v.QueueLink + "/tasks/" + url.PathEscape(rec.TaskID)
	}
	return v
}

// changeFlash is the notice after a post, from fixed texts.
func changeFlash(done string) string {
	switch done {
	case "refresh":
		return "A get change was queued to read the platform's lists; this page follows it."
	case "canceled":
		return "Canceled."
	case "cancel-requested":
		return "Cancel requested: the change is running, and stops unless WeChat has already answered; this page follows it."
	case "already-final":
		return "The change had already finished; there was nothing to cancel."
	}
	return ""
}

func (c *Console) changePage(w http.ResponseWriter, r *http.Request) {
	live, ok := c.readChange(w, r)
	if !ok {
		return
	}
	v := changeView{Flash: changeFlash(r.URL.Query().Get("done")), Live: live}
	c.render(w, http.StatusOK, "change.html", page{Title: "Change " + live.Rec.TaskID, Nav: "changes", Data: v})
}

// changeLive answers the part of the change page that follows the change
// (console.js replaces it every 2s until data-done).
func (c *Console) changeLive(w http.ResponseWriter, r *http.Request) {
	live, ok := c.readChange(w, r)
	if !ok {
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	if err := c.tmpl.ExecuteTemplate(w, "change-live", live); err != nil {
		c.cfg.Log.Error("console fragment failed to render", zap.String("fragment", "change-live"), zap.Error(err))
	}
}

func (c *Console) changeCancel(w http.ResponseWriter, r *http.Request) {
	id, ok := c.changeID(w, r)
	if !ok {
		return
	}
	rec, err := c.cfg.Client.Cancel(r.Context(), id)
	done := "canceled"
	switch {
	case errors.Is(err, tasks.ErrFinal):
		done = "already-final"
	case errors.Is(err, tasks.ErrTaskNotFound):
		c.fail(w, http.StatusNotFound, "no change "+id+" (never submitted, or its record expired)")
		return
	case err != nil:
		c.opFailed(w, r, err)
		return
	case rec != nil && !rec.Status.Final():
		done = "cancel-requested"
	}
	c.cfg.Log.Info("change canceled by an operator (console)", zap.String("task_id", id), zap.String("remote_addr", r.RemoteAddr), zap.String("outcome", done))
	http.Redirect(w, r, "/ui/changes/"+id+"?done="+done, http.StatusSeeOther)
}
