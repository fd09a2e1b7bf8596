package wechattest

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

const checkApp = "wxcccccccccccccccc"

// The verification file of checkApp.
var fileName, fileContent = New(Config{}).ConfirmFile(checkApp)

// fileHost is every domain's web server: one TLS server that the sandbox's
// file client reaches whatever the domain, routing by Host.
type fileHost struct {
	srv    *httptest.Server
	client *http.Client

	mu   sync.Mutex
	hits []string // "host path", in arrival order
}

// newFileHost serves, per domain, the handler in routes; other domains 404.
// The httptest certificate covers *.example.com, so domains live there.
func newFileHost(t *testing.T, routes map[string]http.HandlerFunc) *fileHost {
	t.Helper()
	fh := &fileHost{}
	fh.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fh.mu.Lock()
		fh.hits = append(fh.hits, r.Host+" "+r.URL.Path)
		fh.mu.Unlock()
		if h, ok := routes[r.Host]; ok {
			h(w, r)
			return
		}
		http.NotFound(w, r)
	}))
	t.Cleanup(fh.srv.Close)
	roots := x509.NewCertPool()
	roots.AddCert(fh.srv.Certificate())
	addr := fh.srv.Listener.Addr().String()
	tr := &http.Transport{
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		TLSClientConfig: &tls.Config{RootCAs: roots},
	}
	t.Cleanup(tr.CloseIdleConnections)
	fh.client = &http.Client{Transport: tr, Timeout: 2 * time.Second}
	return fh
}

func (fh *fileHost) seen() []string {
	fh.mu.Lock()
	defer fh.mu.Unlock()
	return append([]string(nil), fh.hits...)
}

// serve answers with the given status and body.
func serve(status int, body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(status)
		_, _ = w.Write([]byte(body))
	}
}

// serveFile answers body at the platform's file path only.
func serveFile(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/"+fileName {
			http.NotFound(w, r)
			return
		}
		_, _ = w.Write([]byte(body))
	}
}

// checkSandbox is a strict sandbox whose file client reaches fh, holding
// platform p (as checkApp), and a token for it.
func checkSandbox(t *testing.T, fh *fileHost, p Platform) (*Sandbox, string) {
	t.Helper()
	s := New(Config{Strict: true, FileClient: fh.client})
	p.AppID = checkApp
	s.PutPlatform(p)
	var tok struct {
		Token string `json:"component_access_token"`
	}
	do(t, s, "/cgi-bin/component/api_component_token",
		`{"component_appid":"`+checkApp+`","component_appsecret":"s","component_verify_ticket":"t"}`, &tok)
	require.NotEmpty(t, tok.Token)
	return s, tok.Token
}

// do POSTs body to the sandbox and decodes its JSON answer into out.
func do(t *testing.T, s *Sandbox, path, body string, out any) {
	t.Helper()
	rec := httptest.NewRecorder()
	s.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodPost, path, strings.NewReader(body)))
	require.Equal(t, http.StatusOK, rec.Code, rec.Body.String())
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), out))
}

type modifyAnswer struct {
	ErrCode int    `json:"errcode"`
	Testing string `json:"testing_wxa_jump_h5_domain"`
	Invalid string `json:"invalid_wxa_jump_h5_domain"`
}

func modifyCall(t *testing.T, s *Sandbox, tok, action string, domains ...string) modifyAnswer {
	t.Helper()
	body, err := json.Marshal(map[string]any{"action": action, "wxa_jump_h5_domain": strings.Join(domains, ";")})
	require.NoError(t, err)
	var a modifyAnswer
	do(t, s, "/cgi-bin/component/modify_wxa_jump_domain?access_token="+tok, string(body), &a)
	return a
}

func lastCall(s *Sandbox) Call {
	calls := s.Calls()
	return calls[len(calls)-1]
}

func TestCheckFilesAdd(t *testing.T) {
	t.Parallel()
	name, content := fileName, fileContent
	fh := newFileHost(t, map[string]http.HandlerFunc{
		"good.example.com":   serveFile(content),
		"padded.example.com": serveFile("\r\n  " + content + " \n"),
		"wrong.example.com":  serveFile("sandbox-wxother"),
		"error.example.com":  serve(http.StatusInternalServerError, content),
		"redirect.example.com": func(w http.ResponseWriter, r *http.Request) {
			http.Redirect(w, r, "https://good.example.com/"+name, http.StatusFound)
		},
		// Only the first 4 KiB are read: the content past them is not seen.
		"long.example.com": serveFile(strings.Repeat(" ", 5<<10) + content),
	})
	s, tok := checkSandbox(t, fh, Platform{Released: true, CheckFiles: true})

	domains := []string{"good.example.com", "missing.example.com", "wrong.example.com", "padded.example.com",
		"error.example.com", "redirect.example.com", "long.example.com"}
	a := modifyCall(t, s, tok, "add", domains...)
	require.Equal(t, 0, a.ErrCode)
	require.Equal(t, "good.example.com;padded.example.com", a.Testing)
	require.Equal(t, "missing.example.com;wrong.example.com;error.example.com;redirect.example.com;long.example.com", a.Invalid)

	want := make([]string, 0, len(domains))
	for _, d := range domains {
		want = append(want, d+" /"+name)
	}
	require.ElementsMatch(t, want, fh.seen(), "one fetch per domain, of /FILE_NAME with Host the domain; redirects not followed")
	require.Equal(t, len(domains), lastCall(s).FileChecks)
}

func TestCheckFilesActions(t *testing.T) {
	t.Parallel()
	content := fileContent
	fh := newFileHost(t, map[string]http.HandlerFunc{"good.example.com": serveFile(content)})
	s, tok := checkSandbox(t, fh, Platform{Released: true, CheckFiles: true})

	a := modifyCall(t, s, tok, "add", "good.example.com")
	require.Equal(t, modifyAnswer{Testing: "good.example.com"}, a)
	require.Len(t, fh.seen(), 1)

	// Only add and set fetch: the rest changes no domain into the lists.
	require.Equal(t, modifyAnswer{Testing: "good.example.com"}, modifyCall(t, s, tok, "get"))
	require.Equal(t, modifyAnswer{}, modifyCall(t, s, tok, "delete", "good.example.com", "missing.example.com"))
	require.Len(t, fh.seen(), 1, "get and delete never fetch")
	require.Zero(t, lastCall(s).FileChecks)

	a = modifyCall(t, s, tok, "set", "missing.example.com", "good.example.com", "good.example.com")
	require.Equal(t, modifyAnswer{Testing: "good.example.com", Invalid: "missing.example.com"}, a)
	require.Len(t, fh.seen(), 3, "set fetches, each domain once")
	require.Equal(t, 2, lastCall(s).FileChecks)
}

func TestCheckFilesPlatforms(t *testing.T) {
	t.Parallel()
	content := fileContent
	routes := map[string]http.HandlerFunc{
		"good.example.com":  serveFile(content),
		"other.example.com": serveFile(content),
	}
	tests := []struct {
		name        string
		give        Platform
		wantTesting string
		wantInvalid string
		wantFetches int
	}{
		{
			name:        "no check: nothing fetched, all applied",
			give:        Platform{},
			wantTesting: "good.example.com;other.example.com;missing.example.com",
		},
		{
			name:        "check",
			give:        Platform{CheckFiles: true},
			wantTesting: "good.example.com;other.example.com",
			wantInvalid: "missing.example.com",
			wantFetches: 3,
		},
		{
			name:        "check and verified: a domain needs both",
			give:        Platform{CheckFiles: true, Verified: []string{"good.example.com", "missing.example.com"}},
			wantTesting: "good.example.com",
			wantInvalid: "other.example.com;missing.example.com",
			wantFetches: 3,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			fh := newFileHost(t, routes)
			tt.give.Released = true
			s, tok := checkSandbox(t, fh, tt.give)
			a := modifyCall(t, s, tok, "add", "good.example.com", "other.example.com", "missing.example.com")
			require.Equal(t, modifyAnswer{Testing: tt.wantTesting, Invalid: tt.wantInvalid}, a)
			require.Len(t, fh.seen(), tt.wantFetches)
			require.Equal(t, tt.wantFetches, lastCall(s).FileChecks)
		})
	}
}

func TestCheckFilesRefusedCalls(t *testing.T) {
	t.Parallel()
	content := fileContent
	fh := newFileHost(t, map[string]http.HandlerFunc{"good.example.com": serveFile(content)})
	s, tok := checkSandbox(t, fh, Platform{CheckFiles: true})

	require.Equal(t, 40001, modifyCall(t, s, "nope", "add", "good.example.com").ErrCode)
	require.Equal(t, 9410016, modifyCall(t, s, tok, "add", "good.example.com", "https://x.example.com").ErrCode)
	body := `{"action":"add","wxa_jump_h5_domain":"good.example.com","is_modify_published_together":true}`
	var a modifyAnswer
	do(t, s, "/cgi-bin/component/modify_wxa_jump_domain?access_token="+tok, body, &a)
	require.Equal(t, 61028, a.ErrCode, "not released")
	require.Empty(t, fh.seen(), "calls refused anyway fetch nothing")

	s.SetFaults(checkApp, Faults{Script: []int{-1}})
	require.Equal(t, modifyAnswer{ErrCode: -1}, modifyCall(t, s, tok, "add", "good.example.com"), "a scripted fault wins")
	p, _ := s.Platform(checkApp)
	require.Empty(t, p.Testing)
}

func TestCheckFilesConcurrency(t *testing.T) {
	t.Parallel()
	content := fileContent
	var (
		mu             sync.Mutex
		inFlight, most int
	)
	good := serveFile(content)
	routes := map[string]http.HandlerFunc{}
	var domains []string
	for _, c := range "abcdefghijklmnopqrst" {
		d := string(c) + ".example.com"
		domains = append(domains, d)
		routes[d] = func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			inFlight++
			most = max(most, inFlight)
			mu.Unlock()
			time.Sleep(20 * time.Millisecond)
			mu.Lock()
			inFlight--
			mu.Unlock()
			good(w, r)
		}
	}
	fh := newFileHost(t, routes)
	s, tok := checkSandbox(t, fh, Platform{CheckFiles: true})

	a := modifyCall(t, s, tok, "add", domains...)
	require.Equal(t, strings.Join(domains, ";"), a.Testing)
	require.Empty(t, a.Invalid)
	mu.Lock()
	defer mu.Unlock()
	require.LessOrEqual(t, most, 8, "bounded")
	require.Greater(t, most, 1, "concurrent")
}

func TestCheckFilesOutsideLock(t *testing.T) {
	t.Parallel()
	content := fileContent
	arrived, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	unblock := func() { releaseOnce.Do(func() { close(release) }) }
	fh := newFileHost(t, map[string]http.HandlerFunc{"slow.example.com": func(w http.ResponseWriter, r *http.Request) {
		close(arrived)
		<-release
		serveFile(content)(w, r)
	}})
	t.Cleanup(unblock) // before the server closes, should the test fail early
	s, tok := checkSandbox(t, fh, Platform{CheckFiles: true})

	done := make(chan *httptest.ResponseRecorder, 1)
	go func() {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/cgi-bin/component/modify_wxa_jump_domain?access_token="+tok,
			strings.NewReader(`{"action":"add","wxa_jump_h5_domain":"slow.example.com"}`))
		s.Handler().ServeHTTP(rec, req)
		done <- rec
	}()
	<-arrived
	// The sandbox answers other calls while a file is being fetched.
	require.Equal(t, 0, modifyCall(t, s, tok, "get").ErrCode)
	unblock()
	var a modifyAnswer
	require.NoError(t, json.Unmarshal((<-done).Body.Bytes(), &a))
	require.Equal(t, modifyAnswer{Testing: "slow.example.com"}, a)
}

func TestAdminCheckFiles(t *testing.T) {
	t.Parallel()
	s := New(Config{})
	srv := httptest.NewServer(s.Handler())
	t.Cleanup(srv.Close)
	get := func(path string, out any) {
		t.Helper()
		resp, err := srv.Client().Get(srv.URL + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.NoError(t, json.NewDecoder(resp.Body).Decode(out))
	}
	req, err := http.NewRequest(http.MethodPut, srv.URL+"/sandbox/platforms/"+checkApp, strings.NewReader(`{"secret":"x","check_files":true}`))
	require.NoError(t, err)
	resp, err := srv.Client().Do(req)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusNoContent, resp.StatusCode)

	var platforms []map[string]any
	get("/sandbox/platforms", &platforms)
	require.Len(t, platforms, 1)
	require.Equal(t, true, platforms[0]["check_files"])
	require.NotContains(t, platforms[0], "secret")

	name, content := s.ConfirmFile(checkApp)
	require.Equal(t, "6363636363.txt", name, "last 10 hex digits of the appid")
	require.Equal(t, "sandbox-"+checkApp, content)
	var file map[string]string
	get("/sandbox/platforms/"+checkApp+"/confirmfile", &file)
	require.Equal(t, map[string]string{"file_name": name, "file_content": content}, file)

	// The WeChat API gives the same file.
	var tok struct {
		Token string `json:"component_access_token"`
	}
	do(t, s, "/cgi-bin/component/api_component_token", `{"component_appid":"`+checkApp+`","component_appsecret":"x","component_verify_ticket":"t"}`, &tok)
	var ans struct {
		ErrCode int    `json:"errcode"`
		Name    string `json:"file_name"`
		Content string `json:"file_content"`
	}
	do(t, s, "/cgi-bin/component/get_domain_confirmfile?access_token="+tok.Token, "", &ans)
	require.Equal(t, 0, ans.ErrCode)
	require.Equal(t, name, ans.Name)
	require.Equal(t, content, ans.Content)
}
