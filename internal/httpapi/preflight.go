package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/wxdomain/wxdomain/internal/preflight"
	"github.com/wxdomain/wxdomain/tasks"
)

// Preflight is what the API needs of the verification-file preflight.
type Preflight interface {
	File(ctx context.Context, appid string) (preflight.File, error)
	Run(ctx context.Context, appid string, domains []string, fresh bool) (preflight.Report, error)
}

// maxPreflightDomains bounds one request's checks: each may take the
// checker's timeout, 8 at a time, within the server's write timeout.
const maxPreflightDomains = 50

// confirmFile answers what a platform's domains must serve, and where.
func (a *api) confirmFile(w http.ResponseWriter, r *http.Request) {
	appid := r.PathValue("appid")
	if !a.knownPlatform(w, appid) {
		return
	}
	f, err := a.cfg.Preflight.File(r.Context(), appid)
	if err != nil {
		a.upstreamOrInternal(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, confirmFileAnswer(appid, f))
}

// confirmFileBody is a platform's verification file as the API shows it.
type confirmFileBody struct {
	Platform    string `json:"platform"`
	FileName    string `json:"file_name"`
	FileContent string `json:"file_content"`
	// Path is where each domain must serve the file: https://DOMAIN + Path.
	Path      string `json:"path"`
	FetchedAt string `json:"fetched_at"`
}

func confirmFileAnswer(appid string, f preflight.File) confirmFileBody {
	return confirmFileBody{Platform: appid, FileName: f.Name, FileContent: f.Content, Path: "/" + f.Name, FetchedAt: f.FetchedAt.UTC().Format("2006-01-02T15:04:05Z07:00")}
}

// preflight checks domains for the platform's verification file now,
// changing nothing; the results are fresh, not from the cache.
func (a *api) preflight(w http.ResponseWriter, r *http.Request) {
	appid := r.PathValue("appid")
	if !a.knownPlatform(w, appid) {
		return
	}
	var body struct {
		Domains []string `json:"domains"`
	}
	if !a.decodeBody(w, r, func(b io.Reader) error {
		dec := json.NewDecoder(b)
		dec.DisallowUnknownFields()
		return dec.Decode(&body)
	}) {
		return
	}
	// The domains are checked as a change's would be: normalised, each a
	// valid host name, within the limits.
	change := tasks.JumpDomainChange{Platform: appid, Action: tasks.ActionAdd, Domains: body.Domains}
	err := change.ValidateWith(tasks.Rules{MaxDomains: min(maxPreflightDomains, max(a.cfg.MaxDomains, 1))})
	var ve *tasks.ValidationError
	if errors.As(err, &ve) {
		writeError(w, http.StatusUnprocessableEntity, ve.Problems[0].Code, fmt.Sprintf("%s (at most %d domains per request)", ve.Error(), maxPreflightDomains), ve.Problems)
		return
	}
	rep, err := a.cfg.Preflight.Run(r.Context(), appid, change.Domains, true)
	if err != nil {
		a.upstreamOrInternal(w, r, err)
		return
	}
	type result struct {
		preflight.Finding
		OK     bool   `json:"ok"`
		Reason string `json:"reason"`
	}
	out := struct {
		confirmFileBody
		OK      bool     `json:"ok"`
		Results []result `json:"results"`
	}{confirmFileBody: confirmFileAnswer(appid, rep.File), OK: len(rep.Failed()) == 0}
	for _, f := range rep.Findings {
		out.Results = append(out.Results, result{Finding: f, OK: f.OK(), Reason: f.Reason()})
	}
	writeJSON(w, http.StatusOK, out)
}

// upstreamOrInternal answers a failure to get the verification file:
// WeChat's refusal or absence is 502 with its reason (no secret is in
// it); Redis trouble and the rest as internal does.
func (a *api) upstreamOrInternal(w http.ResponseWriter, r *http.Request, err error) {
	if r.Context().Err() != nil || preflight.IsStoreError(err) {
		a.internal(w, r, err)
		return
	}
	writeError(w, http.StatusBadGateway, "upstream_error", "could not get the platform's verification file from WeChat: "+err.Error(), nil)
}
