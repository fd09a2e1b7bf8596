package console

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/tasks"
)

const (
	// rolloutListSize is how many rollouts the list shows, newest first.
	rolloutListSize = 50
	// rolloutPageSize is how many platforms a page of the table asks for
	// (Redis may answer a few more: a scan step is kept whole).
	rolloutPageSize = 100
	// roMaxGrouped bounds the failed platforms read to group by errcode;
	// the page says when there were more.
	roMaxGrouped = 2000
	// roGroupSample is how many platforms a failure group names.
	roGroupSample = 8
	// roMaxPlanLines bounds each part of a dry run's plan on the preview.
	roMaxPlanLines = 100
	// resumeAfter is how long a fan-out runs before the page offers to
	// resume it (a fan-out cut short).
	resumeAfter = 2 * time.Minute
)

// rolloutStatuses are the statuses the platforms table filters by.
var rolloutStatuses = []tasks.Status{
	tasks.StatusQueued, tasks.StatusRunning, tasks.StatusRetrying,
	tasks.StatusSucceeded, tasks.StatusPartial, tasks.StatusFailed, tasks.StatusCanceled,
}

// rolloutRoutes serves the rollout pages and the new change/rollout form.
func (c *Console) rolloutRoutes() {
	c.mux.HandleFunc("GET /ui/rollouts", c.rolloutList)
	c.mux.HandleFunc("GET /ui/rollouts/{id}", c.rolloutPage)
	c.mux.HandleFunc("GET /ui/rollouts/{id}/progress", c.rolloutProgress)
	c.mux.HandleFunc("GET /ui/rollouts/{id}/failures.csv", c.rolloutFailuresCSV)
	c.mux.HandleFunc("POST /ui/rollouts/{id}/cancel", c.rolloutCancel)
	c.mux.HandleFunc("POST /ui/rollouts/{id}/retry", c.rolloutRetry)
	c.mux.HandleFunc("GET /ui/new", c.newForm)
	c.mux.HandleFunc("POST /ui/new/preview", c.newPreview)
	c.mux.HandleFunc("POST /ui/new", c.newSubmit)
}

// serviceFailed answers an error of the rollout service or the client
// as the API does: its message for what the operator can act on, never
// the error's internals.
func (c *Console) serviceFailed(w http.ResponseWriter, r *http.Request, err error) {
	status, msg := c.serviceError(r, err)
	c.fail(w, status, msg)
}

func (c *Console) serviceError(r *http.Request, err error) (int, string) {
	switch {
	case errors.Is(err, rollout.ErrNotFound):
		return http.StatusNotFound, "no rollout with this id (it never existed, or it expired)"
	case errors.Is(err, tasks.ErrUnconfirmed):
		return http.StatusServiceUnavailable, err.Error()
	case tasks.RedisUnavailable(err):
		return http.StatusServiceUnavailable, "Redis does not answer for the moment (a failover?); try again"
	case errors.Is(err, context.Canceled):
		return http.StatusServiceUnavailable, "the request was canceled"
	}
	c.cfg.Log.Error("console request failed", zap.String("method", r.Method), zap.String("path", r.URL.Path), zap.Error(err))
	return http.StatusInternalServerError, "internal error; see the server log"
}

// rolloutID is the path's rollout id, checked before Redis is asked.
func (c *Console) rolloutID(w http.ResponseWriter, r *http.Request) (string, bool) {
	if c.cfg.Rollouts == nil {
		c.fail(w, http.StatusServiceUnavailable, "this server does not serve rollouts")
		return "", false
	}
	id := r.PathValue("id")
	if !tasks.ValidRolloutID(id) {
		c.fail(w, http.StatusNotFound, fmt.Sprintf("%q is not a rollout id (16 lower-case hex digits)", tasks.Truncate(id)))
		return "", false
	}
	return id, true
}

func rolloutURL(id string) string { return "/ui/rollouts/" + id }

// --- the list ---

type rolloutRow struct {
	ID, Name, URL    string
	Action           string
	Domains, AllDoms string
	Status, Class    string
	Mode             string
	Bar              roBar
	Counts           rollout.Counts
	Waiting          int
	Created, ISO     string
}

// roBar is a progress bar: a <progress> element (the console's CSP allows
// no inline style, so no width set in a style attribute).
type roBar struct {
	Max, Value, Pct int
	// Total is the rollout's platforms (Max is at least 1).
	Total int
	Label string
}

func roProgressBar(r *rollout.Rollout) roBar {
	done := roFinished(r)
	b := roBar{Max: r.Total, Value: done, Pct: roPercent(done, r.Total), Total: r.Total}
	if b.Max <= 0 {
		b.Max = 1 // a <progress> needs a positive max
	}
	b.Label = fmt.Sprintf("%d of %d platforms done", done, r.Total)
	return b
}

func roFinished(r *rollout.Rollout) int {
	c := r.Counts
	return c.Succeeded + c.Partial + c.Failed + c.Canceled
}

func roPercent(n, total int) int {
	if total <= 0 {
		return 0
	}
	return n * 100 / total
}

// roStatusClass colours a rollout's status.
func roStatusClass(r *rollout.Rollout) string {
	switch {
	case r.Status == rollout.StatusFailed || r.Status == rollout.StatusCanceled:
		return "bad"
	case r.FinishedAt != nil && (r.Counts.Failed > 0 || r.Counts.Canceled > 0):
		return "bad"
	case r.FinishedAt != nil && r.Counts.Partial > 0:
		return "warn"
	case r.FinishedAt != nil:
		return "ok"
	}
	return ""
}

func roShortDomains(ds []string) string {
	switch {
	case len(ds) == 0:
		return "—"
	case len(ds) <= 3:
		return strings.Join(ds, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(ds[:3], ", "), len(ds)-3)
}

func roStamp(t time.Time) (string, string) {
	if t.IsZero() {
		return "—", ""
	}
	t = t.UTC()
	return t.Format("2006-01-02 15:04:05 UTC"), t.Format(time.RFC3339)
}

func rolloutName(r *rollout.Rollout) string {
	if r.Name != "" {
		return r.Name
	}
	return r.ID
}

func (c *Console) rolloutList(w http.ResponseWriter, r *http.Request) {
	if c.cfg.Rollouts == nil {
		c.fail(w, http.StatusServiceUnavailable, "this server does not serve rollouts")
		return
	}
	list, err := c.cfg.Rollouts.List(r.Context(), rolloutListSize)
	if err != nil {
		c.serviceFailed(w, r, err)
		return
	}
	rows := make([]rolloutRow, 0, len(list))
	for _, ro := range list {
		created, iso := roStamp(ro.CreatedAt)
		rows = append(rows, rolloutRow{
			ID: ro.ID, Name: rolloutName(ro), URL: rolloutURL(ro.ID), Action: string(ro.Action),
			Domains: roShortDomains(ro.Domains), AllDoms: strings.Join(ro.Domains, ", "),
			Status: ro.Status, Class: roStatusClass(ro), Mode: ro.Mode, Bar: roProgressBar(ro), Counts: ro.Counts,
			Waiting: ro.Counts.Queued + ro.Counts.Running + ro.Counts.Retrying, Created: created, ISO: iso,
		})
	}
	c.render(w, http.StatusOK, "rollouts.html", page{Title: "Rollouts", Nav: "rollouts", Data: struct {
		Rows  []rolloutRow
		Limit int
	}{rows, rolloutListSize}})
}

// --- one rollout ---

// roProgressView is the part of a rollout's page that updates itself.
type roProgressView struct {
	ID, PollURL, PageURL string
	Status, Class        string
	Bar                  roBar
	Counts               rollout.Counts
	Total, Done          int
	Attempt              int
	Finished             bool
	FinishedAt, ISO      string
	Error                string
	// Polled: rendered for the poll, which then says to reload the page
	// for the final table once the rollout is finished.
	Polled bool
}

func newRoProgressView(ro *rollout.Rollout, polled bool) roProgressView {
	v := roProgressView{
		ID: ro.ID, PollURL: rolloutURL(ro.ID) + "/progress", PageURL: rolloutURL(ro.ID),
		Status: ro.Status, Class: roStatusClass(ro), Bar: roProgressBar(ro), Counts: ro.Counts,
		Total: ro.Total, Done: roFinished(ro), Attempt: ro.Attempt, Finished: ro.FinishedAt != nil,
		Error: ro.Error, Polled: polled,
	}
	if ro.FinishedAt != nil {
		v.FinishedAt, v.ISO = roStamp(*ro.FinishedAt)
	}
	return v
}

// roOutcomeRow is a platform's line in the table.
type roOutcomeRow struct {
	Platform, Status, Class string
	ErrCode, ErrMsg, Reason string
	Preflight               string
	TaskID, ChangeURL       string
}

func newRoOutcomeRow(o rollout.Outcome) roOutcomeRow {
	row := roOutcomeRow{
		Platform: o.Platform, Status: string(o.Status), Class: "status-" + string(o.Status),
		ErrCode: roErrcode(o.ErrCode), ErrMsg: o.ErrMsg, Reason: o.Error, Preflight: o.PreflightFindings(),
		TaskID: o.TaskID, ChangeURL: "/ui/changes/" + url.PathEscape(o.TaskID),
	}
	if row.Reason == "" {
		row.Reason = o.Note
	}
	return row
}

func roErrcode(c *int) string {
	if c == nil {
		return ""
	}
	return strconv.Itoa(*c)
}

// roFailureGroup gathers the failed platforms of one errcode (Code "":
// none, WeChat was not called or did not answer), by reason.
type roFailureGroup struct {
	Code    string
	Meaning string
	ErrMsg  string
	Count   int
	Reasons []roReasonGroup
	// MoreReasons counts the reasons not listed.
	MoreReasons int
}

type roReasonGroup struct {
	Text      string
	Count     int
	Platforms []string
	More      int
}

// roMaxReasons bounds the reasons a failure group lists.
const roMaxReasons = 5

func roGroupFailures(outs []rollout.Outcome, meaning func(int) string) []roFailureGroup {
	type acc struct {
		g       roFailureGroup
		reasons map[string]*roReasonGroup
		order   []string
	}
	byCode := map[string]*acc{}
	var codes []string
	for _, o := range outs {
		code := roErrcode(o.ErrCode)
		a := byCode[code]
		if a == nil {
			a = &acc{g: roFailureGroup{Code: code, ErrMsg: o.ErrMsg}, reasons: map[string]*roReasonGroup{}}
			if o.ErrCode != nil && meaning != nil {
				a.g.Meaning = meaning(*o.ErrCode)
			}
			byCode[code] = a
			codes = append(codes, code)
		}
		a.g.Count++
		text := o.Error
		if text == "" {
			text = o.ErrMsg
		}
		if text == "" {
			text = "(no reason recorded)"
		}
		rg := a.reasons[text]
		if rg == nil {
			rg = &roReasonGroup{Text: text}
			a.reasons[text] = rg
			a.order = append(a.order, text)
		}
		rg.Count++
		if len(rg.Platforms) < roGroupSample {
			rg.Platforms = append(rg.Platforms, o.Platform)
		} else {
			rg.More++
		}
	}
	out := make([]roFailureGroup, 0, len(codes))
	for _, code := range codes {
		a := byCode[code]
		reasons := make([]roReasonGroup, 0, len(a.order))
		for _, t := range a.order {
			rg := *a.reasons[t]
			sort.Strings(rg.Platforms)
			reasons = append(reasons, rg)
		}
		sort.SliceStable(reasons, func(i, j int) bool { return reasons[i].Count > reasons[j].Count })
		if len(reasons) > roMaxReasons {
			a.g.MoreReasons = len(reasons) - roMaxReasons
			reasons = reasons[:roMaxReasons]
		}
		a.g.Reasons = reasons
		out = append(out, a.g)
	}
	// The most platforms first; "no errcode" after the codes of as many.
	sort.SliceStable(out, func(i, j int) bool {
		if out[i].Count != out[j].Count {
			return out[i].Count > out[j].Count
		}
		if (out[i].Code == "") != (out[j].Code == "") {
			return out[j].Code == ""
		}
		return out[i].Code < out[j].Code
	})
	return out
}

type rolloutPageData struct {
	ID, Title, URL string
	Action         string
	Domains        string
	Publish        bool
	Mode           string
	Preflight      string
	Created, ISO   string
	Progress       roProgressView
	Notice         string
	NoticeWarn     bool
	CanCancel      bool
	CanRetry       bool
	// CanResume: a fan-out still under way long after the rollout was
	// created may have been cut short; a retry resumes it.
	CanResume bool
	CSV       string
	// Failures grouped by errcode; Grouped of Failed were read.
	Groups  []roFailureGroup
	Grouped int
	Failed  int
	// The platforms table.
	Status   string
	Statuses []formOption
	Rows     []roOutcomeRow
	Cursor   string
	Next     string
	First    string
}

func (c *Console) rolloutPage(w http.ResponseWriter, r *http.Request) {
	id, ok := c.rolloutID(w, r)
	if !ok {
		return
	}
	q := r.URL.Query()
	status := tasks.Status(q.Get("status"))
	if status != "" && !roValidStatus(status) {
		c.fail(w, http.StatusBadRequest, "status must be one of queued, running, retrying, succeeded, partial, failed, canceled")
		return
	}
	cursor := q.Get("cursor")
	if cursor != "" {
		if _, err := strconv.ParseUint(cursor, 10, 64); err != nil {
			c.fail(w, http.StatusBadRequest, "cursor must be the number a \"Next page\" link gives")
			return
		}
	}
	data, err := c.rolloutPageData(r.Context(), id, status, cursor)
	if err != nil {
		c.serviceFailed(w, r, err)
		return
	}
	data.Notice, data.NoticeWarn = roNotice(q)
	c.render(w, http.StatusOK, "rollout.html", page{Title: "Rollout " + data.Title, Nav: "rollouts", Data: data})
}

func roValidStatus(s tasks.Status) bool {
	for _, st := range rolloutStatuses {
		if s == st {
			return true
		}
	}
	return false
}

func (c *Console) rolloutPageData(ctx context.Context, id string, status tasks.Status, cursor string) (*rolloutPageData, error) {
	svc := c.cfg.Rollouts
	ro, err := svc.Get(ctx, id)
	if err != nil {
		return nil, err
	}
	outs, next, err := svc.Tasks(ctx, id, status, cursor, rolloutPageSize)
	if err != nil {
		return nil, err
	}
	// The failed platforms, to group: the table's when it holds them all.
	var failed []rollout.Outcome
	if cursor == "" && next == "" && (status == "" || status == tasks.StatusFailed) {
		for _, o := range outs {
			if o.Status == tasks.StatusFailed {
				failed = append(failed, o)
			}
		}
	} else if ro.Counts.Failed > 0 {
		if failed, err = c.failedOutcomes(ctx, id); err != nil {
			return nil, err
		}
	}
	sort.Slice(outs, func(i, j int) bool { return outs[i].Platform < outs[j].Platform })
	sort.Slice(failed, func(i, j int) bool { return failed[i].Platform < failed[j].Platform })
	created, iso := roStamp(ro.CreatedAt)
	d := &rolloutPageData{
		ID: id, Title: rolloutName(ro), URL: rolloutURL(id), Action: string(ro.Action), Domains: strings.Join(ro.Domains, ", "),
		Publish: ro.Publish, Mode: ro.Mode, Preflight: string(ro.Preflight), Created: created, ISO: iso,
		Progress:  newRoProgressView(ro, false),
		CanCancel: ro.FinishedAt == nil && ro.Status != rollout.StatusCanceled,
		CanRetry:  ro.Counts.Failed+ro.Counts.Canceled > 0,
		CanResume: ro.Status == rollout.StatusFanningOut && c.cfg.Now().Sub(ro.CreatedAt) > resumeAfter,
		CSV:       rolloutURL(id) + "/failures.csv",
		Groups:    roGroupFailures(failed, c.cfg.Meaning), Grouped: len(failed), Failed: ro.Counts.Failed,
		Status: string(status), Cursor: cursor,
	}
	if d.Preflight == "" {
		d.Preflight = "the workers' default"
	}
	if d.Domains == "" {
		d.Domains = "—"
	}
	d.Statuses = append(d.Statuses, formOption{Value: "", Label: fmt.Sprintf("all (%d)", ro.Total), Selected: status == ""})
	for _, st := range rolloutStatuses {
		d.Statuses = append(d.Statuses, formOption{Value: string(st), Label: fmt.Sprintf("%s (%d)", st, roCount(ro.Counts, st)), Selected: st == status})
	}
	d.Rows = make([]roOutcomeRow, len(outs))
	for i, o := range outs {
		d.Rows[i] = newRoOutcomeRow(o)
	}
	if next != "" {
		d.Next = roTableURL(id, status, next)
	}
	if cursor != "" {
		d.First = roTableURL(id, status, "")
	}
	return d, nil
}

func roTableURL(id string, status tasks.Status, cursor string) string {
	v := url.Values{}
	if status != "" {
		v.Set("status", string(status))
	}
	if cursor != "" {
		v.Set("cursor", cursor)
	}
	u := rolloutURL(id)
	if len(v) > 0 {
		u += "?" + v.Encode()
	}
	return u + "#platforms"
}

func roCount(c rollout.Counts, st tasks.Status) int {
	switch st {
	case tasks.StatusQueued:
		return c.Queued
	case tasks.StatusRunning:
		return c.Running
	case tasks.StatusRetrying:
		return c.Retrying
	case tasks.StatusSucceeded:
		return c.Succeeded
	case tasks.StatusPartial:
		return c.Partial
	case tasks.StatusFailed:
		return c.Failed
	case tasks.StatusCanceled:
		return c.Canceled
	}
	return 0
}

// failedOutcomes reads the failed platforms to group, at most roMaxGrouped.
func (c *Console) failedOutcomes(ctx context.Context, id string) ([]rollout.Outcome, error) {
	var out []rollout.Outcome
	cursor := ""
	for {
		page, next, err := c.cfg.Rollouts.Tasks(ctx, id, tasks.StatusFailed, cursor, 500)
		if err != nil {
			return nil, err
		}
		out = append(out, page...)
		if cursor = next; cursor == "" || len(out) >= roMaxGrouped {
			break
		}
	}
	if len(out) > roMaxGrouped {
		out = out[:roMaxGrouped]
	}
	return out, nil
}

// rolloutProgress answers the poll of a rollout's page: its progress
// part alone, done once the rollout is finished.
func (c *Console) rolloutProgress(w http.ResponseWriter, r *http.Request) {
	id, ok := c.rolloutID(w, r)
	if !ok {
		return
	}
	ro, err := c.cfg.Rollouts.Get(r.Context(), id)
	if err != nil {
		status, msg := c.serviceError(r, err)
		http.Error(w, msg, status)
		return
	}
	var buf bytes.Buffer
	if err := c.tmpl.ExecuteTemplate(&buf, "rollout_progress.html", newRoProgressView(ro, true)); err != nil {
		c.cfg.Log.Error("console fragment failed to render", zap.Error(err))
		http.Error(w, "internal error; see the server log", http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(buf.Bytes())
}

// rolloutFailuresCSV is the CLI's `rollout failures ID --csv`: the failed
// and canceled platforms (what a retry runs again), then those whose
// domains failed their preflight.
func (c *Console) rolloutFailuresCSV(w http.ResponseWriter, r *http.Request) {
	id, ok := c.rolloutID(w, r)
	if !ok {
		return
	}
	all, err := c.cfg.Rollouts.Failures(r.Context(), id)
	if err != nil {
		c.serviceFailed(w, r, err)
		return
	}
	var buf bytes.Buffer
	_ = rollout.WriteFailuresCSV(&buf, all)
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="rollout-`+id+`-failures.csv"`)
	_, _ = w.Write(buf.Bytes())
}

// --- cancel and retry: POST, then 303 back to the page with a notice ---

// Notices a post leaves for the page it goes back to: a code and
// numbers, never text from the URL.
const (
	noticeCanceled   = "canceled"
	noticeCancelNone = "cancel-none"
	noticeRetried    = "retried"
	noticeResumed    = "resumed"
	noticeRetryNone  = "retry-none"
	noticeCreated    = "created"
	noticeReplayed   = "replayed"
)

func roNotice(q url.Values) (msg string, warn bool) {
	n := func(k string) int { v, _ := strconv.Atoi(q.Get(k)); return max(v, 0) }
	switch q.Get("notice") {
	case noticeCanceled:
		return fmt.Sprintf("Canceled: %d platforms will not run; %d running finish.", n("n"), n("running")), false
	case noticeCancelNone:
		return "Nothing to cancel: the rollout is already " + roStatusWord(q.Get("was")) + ".", true
	case noticeRetried:
		return fmt.Sprintf("Retrying: attempt %d runs the failed and canceled platforms again.", n("attempt")), false
	case noticeResumed:
		return fmt.Sprintf("The fan-out of attempt %d was queued again; it resumes where it stopped.", n("attempt")), false
	case noticeRetryNone:
		return "Nothing to retry: no platform failed or was canceled.", true
	case noticeCreated:
		return "Rollout created: its fan-out queues the platforms in the background.", false
	case noticeReplayed:
		return "This rollout had been submitted already: here it is (nothing new was created).", true
	}
	return "", false
}

// roStatusWord echoes a rollout status from a notice only if it is one.
func roStatusWord(s string) string {
	switch s {
	case rollout.StatusDone, rollout.StatusCanceled, rollout.StatusFailed:
		return s
	}
	return "finished"
}

func roBackTo(w http.ResponseWriter, r *http.Request, id string, kv ...string) {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Set(kv[i], kv[i+1])
	}
	http.Redirect(w, r, rolloutURL(id)+"?"+v.Encode(), http.StatusSeeOther)
}

func (c *Console) rolloutCancel(w http.ResponseWriter, r *http.Request) {
	id, ok := c.rolloutID(w, r)
	if !ok {
		return
	}
	before, err := c.cfg.Rollouts.Get(r.Context(), id)
	if err != nil {
		c.serviceFailed(w, r, err)
		return
	}
	if before.Status == rollout.StatusCanceled || before.FinishedAt != nil {
		roBackTo(w, r, id, "notice", noticeCancelNone, "was", before.Status)
		return
	}
	after, err := c.cfg.Rollouts.Cancel(r.Context(), id)
	if err != nil {
		c.serviceFailed(w, r, err)
		return
	}
	roBackTo(w, r, id, "notice", noticeCanceled,
		"n", strconv.Itoa(after.Counts.Canceled-before.Counts.Canceled), "running", strconv.Itoa(after.Counts.Running))
}

func (c *Console) rolloutRetry(w http.ResponseWriter, r *http.Request) {
	id, ok := c.rolloutID(w, r)
	if !ok {
		return
	}
	before, err := c.cfg.Rollouts.Get(r.Context(), id)
	if err != nil {
		c.serviceFailed(w, r, err)
		return
	}
	after, err := c.cfg.Rollouts.Retry(r.Context(), id)
	if err != nil {
		c.serviceFailed(w, r, err)
		return
	}
	switch {
	case after.Attempt != before.Attempt:
		roBackTo(w, r, id, "notice", noticeRetried, "attempt", strconv.Itoa(after.Attempt))
	case before.Status == rollout.StatusFanningOut:
		roBackTo(w, r, id, "notice", noticeResumed, "attempt", strconv.Itoa(after.Attempt))
	default:
		roBackTo(w, r, id, "notice", noticeRetryNone)
	}
}

// --- the new change or rollout form ---

type newPageData struct {
	Form      changeForm
	Actions   []formOption
	Modes     []formOption
	Problems  formProblems
	Preview   *previewData
	Rollouts  bool
	Platforms int
}

// previewData is a dry run's result, shown above the form with a button
// that submits the same values.
type previewData struct {
	Rollout bool
	// A change: its platform and what it would do.
	Platform  string
	Sentences []string
	// A rollout: a summary and the plan's parts.
	Summary         string
	Plan            []string
	PlanTotal       int
	PlanMore        int
	Ensure          []string
	EnsureMore      int
	Preflight       []string
	PreflightNotice string
	Notes           []string
}

func (c *Console) newPage(w http.ResponseWriter, status int, f changeForm, probs formProblems, prev *previewData, errMsg string) {
	if f.Action == "" && probs.empty() {
		f.Action = string(tasks.ActionAdd)
	}
	d := newPageData{Form: f, Actions: f.actionOptions(), Modes: f.preflightOptions(), Problems: probs, Preview: prev, Rollouts: c.cfg.Rollouts != nil}
	title := "New change"
	if prev != nil {
		title = "Preview"
	}
	c.render(w, status, "new.html", page{Title: title, Nav: "new", Data: d, Error: errMsg})
}

func (c *Console) newForm(w http.ResponseWriter, r *http.Request) {
	f := readChangeForm(r.URL.Query())
	f.Key = "" // a key comes from a preview only
	c.newPage(w, http.StatusOK, f, formProblems{}, nil, "")
}

func (c *Console) newPreview(w http.ResponseWriter, r *http.Request) {
	v, err := parsePost(w, r)
	if err != nil {
		c.newPage(w, http.StatusBadRequest, changeForm{}, formProblems{}, nil, err.Error())
		return
	}
	f := readChangeForm(v)
	f.Key = newIdempotencyKey()
	prev, probs, err := c.preview(r.Context(), f)
	switch {
	case err != nil:
		status, msg := c.serviceError(r, err)
		c.newPage(w, status, f, formProblems{}, nil, msg)
	case !probs.empty():
		f.Key = ""
		c.newPage(w, http.StatusUnprocessableEntity, f, probs, nil, "")
	default:
		c.newPage(w, http.StatusOK, f, formProblems{}, prev, "")
	}
}

// single reports whether the form is one change (one platform) rather
// than a rollout; the platform list's problems are the form's.
func (f changeForm) single(probs *formProblems) (list []string, all, single bool) {
	list, all = f.platformList()
	if all && len(list) > 0 {
		probs.add("platforms", `platforms: give a list of platforms or all, not both`)
	}
	return list, all, !all && len(list) <= 1
}

func (f changeForm) spec(list []string, all bool) rollout.Spec {
	ch := f.change()
	return rollout.Spec{
		Name: f.Name, Action: ch.Action, Domains: ch.Domains, Publish: f.Publish, Platforms: list, All: all,
		Ensure: f.Ensure, Preflight: ch.Preflight, IdempotencyKey: f.Key,
	}
}

// previewRules are the rules a single change is checked with before it
// is submitted: the platforms this server knows (Config.KnownPlatform,
// else the Platforms report). Enqueue checks again with the server's own
// rules, its domain limit included.
func (c *Console) previewRules(ctx context.Context) tasks.Rules {
	if c.cfg.KnownPlatform != nil {
		return tasks.Rules{KnownPlatform: c.cfg.KnownPlatform}
	}
	if c.cfg.Platforms == nil {
		return tasks.Rules{}
	}
	ps, err := c.cfg.Platforms(ctx)
	if err != nil {
		return tasks.Rules{} // Enqueue will say
	}
	known := make(map[string]bool, len(ps))
	for _, p := range ps {
		known[p.AppID] = true
	}
	return tasks.Rules{KnownPlatform: func(appid string) bool { return known[appid] }}
}

// preview validates the form and shows what submitting it would do: a
// change's validation and plan, or a rollout's dry run.
func (c *Console) preview(ctx context.Context, f changeForm) (*previewData, formProblems, error) {
	var probs formProblems
	list, all, single := f.single(&probs)
	if !probs.empty() {
		return nil, probs, nil
	}
	if single {
		if c.cfg.Client == nil {
			return nil, probs, errors.New("this server does not enqueue changes")
		}
		ch := f.change()
		var ve *tasks.ValidationError
		if err := ch.ValidateWith(c.previewRules(ctx)); errors.As(err, &ve) {
			probs.addValidation(ve)
			return nil, probs, nil
		} else if err != nil {
			return nil, probs, err
		}
		p := &previewData{Platform: ch.Platform, Sentences: changePlanSentences(ch)}
		if f.Name != "" {
			p.Notes = append(p.Notes, "One platform is a single change, not a rollout: the name is not kept. List several platforms (or all) for a rollout.")
		}
		return p, probs, nil
	}
	if c.cfg.Rollouts == nil {
		return nil, probs, errors.New("this server does not serve rollouts")
	}
	spec := f.spec(list, all)
	spec.DryRun, spec.IdempotencyKey = true, ""
	ro, err := c.cfg.Rollouts.Create(ctx, spec)
	var ve *tasks.ValidationError
	if errors.As(err, &ve) {
		probs.addValidation(ve)
		return nil, probs, nil
	}
	if err != nil {
		return nil, probs, err
	}
	p := &previewData{Rollout: true, Summary: rolloutSummary(ro, all), PlanTotal: len(ro.Plan)}
	for i, ch := range ro.Plan {
		if i == roMaxPlanLines {
			p.PlanMore = len(ro.Plan) - roMaxPlanLines
			break
		}
		p.Plan = append(p.Plan, fmt.Sprintf("would call %s %s on %s", ch.Action, strings.Join(ch.Domains, ","), ch.Platform))
	}
	if ro.EnsurePlan != nil {
		lines := ro.EnsurePlan.Lines()
		if len(lines) > roMaxPlanLines+2 {
			p.EnsureMore = len(lines) - roMaxPlanLines - 2
			lines = lines[:roMaxPlanLines+2]
		}
		p.Ensure = lines
	}
	if ro.PreflightPlan != nil {
		p.Preflight = ro.PreflightPlan.Lines()
	} else if ro.Action == tasks.ActionAdd || ro.Action == tasks.ActionSet {
		p.PreflightNotice = preflightModeSentence(ro.Preflight)
	}
	return p, probs, nil
}

func rolloutSummary(ro *rollout.Rollout, all bool) string {
	which := fmt.Sprintf("%d platforms", ro.Total)
	if all {
		which = fmt.Sprintf("all %d configured platforms", ro.Total)
	}
	what := string(ro.Action)
	if len(ro.Domains) > 0 {
		what += " " + strings.Join(ro.Domains, ", ")
	}
	s := fmt.Sprintf("A rollout: %s on %s", what, which)
	if ro.Action != tasks.ActionGet {
		if ro.Publish {
			s += ", testing and published lists"
		} else {
			s += ", testing lists only"
		}
	}
	if ro.Mode == rollout.ModeDryRun && ro.EnsurePlan != nil {
		s += ", calling only for each platform's difference (ensure)"
	}
	if ro.Name != "" {
		s += fmt.Sprintf(", named %q", ro.Name)
	}
	return s + "."
}

// changePlanSentences say what a validated change would do, in words.
func changePlanSentences(ch tasks.JumpDomainChange) []string {
	lists := "the testing list; the published list is left as it is"
	if ch.Publish {
		lists = "the testing and the published (全网发布) lists"
	}
	ds := strings.Join(ch.Domains, ", ")
	var out []string
	switch ch.Action {
	case tasks.ActionGet:
		return []string{"Read the platform's testing and published jump-domain lists; nothing is changed."}
	case tasks.ActionAdd:
		out = append(out, fmt.Sprintf("Add %s to %s.", ds, lists))
	case tasks.ActionDelete:
		out = append(out, fmt.Sprintf("Delete %s from %s.", ds, lists))
	case tasks.ActionSet:
		out = append(out, fmt.Sprintf("Replace %s with exactly %s: every domain not listed is removed.", lists, ds))
	}
	if ch.Ensure {
		out = append(out, "Ensure: the worker first reads the platform's current lists and calls WeChat only for the difference; nothing is called if the platform is already in that state, and an add that would exceed the domain limit fails without a call.")
	}
	if ch.Action == tasks.ActionAdd || ch.Action == tasks.ActionSet {
		out = append(out, preflightModeSentence(ch.Preflight))
	}
	return out
}

func preflightModeSentence(m tasks.PreflightMode) string {
	const check = "checks that each domain serves the platform's verification file before calling WeChat"
	switch m {
	case tasks.PreflightEnforce:
		return "Preflight enforce: the worker " + check + "; a domain that does not is not sent, and the change fails without a call if none does."
	case tasks.PreflightWarn:
		return "Preflight warn: the worker " + check + "; the call is made anyway, and the record shows what it found."
	case tasks.PreflightOff:
		return "Preflight off: the domains are not checked."
	}
	return "Preflight: the workers' default mode (WXDOMAIN_PREFLIGHT, warn unless set otherwise); the worker " + check + "."
}

// newSubmit enqueues the previewed change or creates the previewed
// rollout, under the preview's idempotency key: submitting twice finds
// the first.
func (c *Console) newSubmit(w http.ResponseWriter, r *http.Request) {
	v, err := parsePost(w, r)
	if err != nil {
		c.newPage(w, http.StatusBadRequest, changeForm{}, formProblems{}, nil, err.Error())
		return
	}
	f := readChangeForm(v)
	if !tasks.ValidIdempotencyKey(f.Key) {
		f.Key = ""
		c.newPage(w, http.StatusBadRequest, f, formProblems{}, nil, "Preview first: a change is submitted from its preview.")
		return
	}
	var probs formProblems
	list, all, single := f.single(&probs)
	if !probs.empty() {
		f.Key = ""
		c.newPage(w, http.StatusUnprocessableEntity, f, probs, nil, "")
		return
	}
	if single {
		if c.cfg.Client == nil {
			c.newPage(w, http.StatusServiceUnavailable, f, probs, nil, "this server does not enqueue changes")
			return
		}
		rec, err := c.cfg.Client.Enqueue(r.Context(), f.change(), tasks.EnqueueOptions{IdempotencyKey: f.Key})
		if c.submitFailed(w, r, f, err) {
			return
		}
		http.Redirect(w, r, "/ui/changes/"+url.PathEscape(rec.TaskID), http.StatusSeeOther)
		return
	}
	if c.cfg.Rollouts == nil {
		c.newPage(w, http.StatusServiceUnavailable, f, probs, nil, "this server does not serve rollouts")
		return
	}
	ro, err := c.cfg.Rollouts.Create(r.Context(), f.spec(list, all))
	if c.submitFailed(w, r, f, err) {
		return
	}
	n := noticeCreated
	if ro.Replayed {
		n = noticeReplayed
	}
	http.Redirect(w, r, rolloutURL(ro.ID)+"?notice="+n, http.StatusSeeOther)
}

// submitFailed shows the form again with what was wrong.
func (c *Console) submitFailed(w http.ResponseWriter, r *http.Request, f changeForm, err error) bool {
	if err == nil {
		return false
	}
	f.Key = "" // preview again
	var ve *tasks.ValidationError
	switch {
	case errors.As(err, &ve):
		var probs formProblems
		probs.addValidation(ve)
		c.newPage(w, http.StatusUnprocessableEntity, f, probs, nil, "")
	case errors.Is(err, tasks.ErrIdempotencyConflict):
		c.newPage(w, http.StatusConflict, f, formProblems{}, nil, "This preview was already submitted with other values ("+err.Error()+"): preview again.")
	case errors.Is(err, tasks.ErrInvalidIdempotencyKey):
		c.newPage(w, http.StatusBadRequest, f, formProblems{}, nil, err.Error()+": preview again.")
	default:
		status, msg := c.serviceError(r, err)
		c.newPage(w, status, f, formProblems{}, nil, msg)
	}
	return true
}
