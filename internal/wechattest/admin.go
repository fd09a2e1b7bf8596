package wechattest

import (
	"net/http"
	"sort"
	"strconv"
	"time"
)

// The /sandbox/ admin API lets a person or another language drive the
// sandbox: configure platforms, inject faults, revoke tokens, read calls.
func (s *Sandbox) adminRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /sandbox/platforms", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, s.snapshot())
	})
	mux.HandleFunc("PUT /sandbox/platforms/{appid}", func(w http.ResponseWriter, r *http.Request) {
		var p Platform
		if err := decode(r, &p); err != nil {
			http.Error(w, "bad platform JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		p.AppID = r.PathValue("appid")
		s.PutPlatform(p)
		w.WriteHeader(http.StatusNoContent)
	})
	// The file to serve at each domain's root for a platform with
	// check_files, for any appid (a lenient sandbox creates platforms late).
	mux.HandleFunc("GET /sandbox/platforms/{appid}/confirmfile", func(w http.ResponseWriter, r *http.Request) {
		name, content := s.ConfirmFile(r.PathValue("appid"))
		writeJSON(w, map[string]string{"file_name": name, "file_content": content})
	})
	mux.HandleFunc("PUT /sandbox/platforms/{appid}/faults", func(w http.ResponseWriter, r *http.Request) {
		var f struct {
			Faults
			LatencyMS int `json:"latency_ms"`
		}
		if err := decode(r, &f); err != nil {
			http.Error(w, "bad faults JSON: "+err.Error(), http.StatusBadRequest)
			return
		}
		f.Faults.Latency = time.Duration(f.LatencyMS) * time.Millisecond
		s.SetFaults(r.PathValue("appid"), f.Faults)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /sandbox/revoke_tokens", func(w http.ResponseWriter, r *http.Request) {
		var appids []string
		if a := r.URL.Query().Get("appid"); a != "" {
			appids = []string{a}
		}
		writeJSON(w, map[string]int{"revoked": s.RevokeTokens(appids...)})
	})
	mux.HandleFunc("GET /sandbox/calls", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, s.Calls())
	})
	mux.HandleFunc("DELETE /sandbox/calls", func(w http.ResponseWriter, r *http.Request) {
		s.ResetCalls()
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /sandbox/stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, s.Stats())
	})
}

// Stats sums up the call log.
type Stats struct {
	TokenFetches map[string]int `json:"token_fetches"`
	// Calls counts calls by API and errcode, e.g. "modify_wxa_jump_domain 0".
	Calls map[string]int `json:"calls"`
}

// Stats counts token fetches per platform and calls per API and errcode.
func (s *Sandbox) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := Stats{TokenFetches: map[string]int{}, Calls: map[string]int{}}
	for id, p := range s.platforms {
		st.TokenFetches[id] = p.tokenFetches
	}
	for _, c := range s.calls {
		st.Calls[c.API+" "+strconv.Itoa(c.ErrCode)]++
	}
	return st
}

type platformState struct {
	Platform
	TokenFetches int    `json:"token_fetches"`
	Faults       Faults `json:"faults"`
}

func (s *Sandbox) snapshot() []platformState {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]platformState, 0, len(s.platforms))
	for _, p := range s.platforms {
		ps := platformState{Platform: p.Platform, TokenFetches: p.tokenFetches, Faults: p.faults}
		ps.Secret, ps.Ticket = "", "" // the admin API never shows secrets
		out = append(out, ps)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].AppID < out[j].AppID })
	return out
}
