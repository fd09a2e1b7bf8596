// Package console is the operator's console: server-rendered pages under
// /ui/ about platforms, domains, rollouts and changes, built with
// html/template and embedded in the binary (no JavaScript build, no CDN).
// It is mounted by the HTTP API behind the API's authentication (a
// browser logs in with basic auth, an API token as the password) and the
// API's same-origin rule for every form post.
package console

import (
	"context"
	"embed"
	"html/template"
	"io/fs"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/wxdomain/wxdomain/internal/platform"
	"github.com/wxdomain/wxdomain/internal/rollout"
	"github.com/wxdomain/wxdomain/tasks"
)

//go:embed templates/*.html static/*
var files embed.FS

// Config is what the console reads and acts through: the same services
// the API uses.
type Config struct {
	// Client enqueues, reads and cancels changes.
	Client *tasks.Client
	// Rollouts creates, reads, cancels and retries rollouts.
	Rollouts *rollout.Service
	// Platforms reports the configured platforms' state.
	Platforms func(ctx context.Context) ([]platform.Status, error)
	// Lists returns the last known lists of platforms (nil: unknown).
	Lists func(ctx context.Context, appids []string) (map[string]tasks.PlatformLists, error)
	// Factors, when set, reads the platforms' pacing factors (busy
	// answers slow a platform below its rate) in one round trip.
	Factors func(ctx context.Context, appids []string) (map[string]float64, error)
	// DefaultRate is the rate of a platform that sets none.
	DefaultRate float64
	// KnownPlatform, when set, says whether an appid is configured,
	// without Redis (else Platforms is read).
	KnownPlatform func(appid string) bool
	// Meaning explains a WeChat errcode in an operator's words (the
	// worker's classification table).
	Meaning func(code int) string
	// MonitoringPath is where asynqmon is served ("/monitoring"), for
	// links to a change's task; "" hides them.
	MonitoringPath string
	// Queue and BulkQueue name the asynq queues, for those links.
	Queue, BulkQueue string
	Log              *zap.Logger
	// Now is the clock (tests); default time.Now.
	Now func() time.Time
}

// Console serves the pages.
type Console struct {
	cfg  Config
	tmpl *template.Template
	mux  *http.ServeMux
}

// Path is where the console is mounted.
const Path = "/ui/"

// New returns the console's handler, to be mounted at Path.
func New(cfg Config) *Console {
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	c := &Console{cfg: cfg, mux: http.NewServeMux()}
	c.tmpl = template.Must(template.New("").Funcs(funcs).ParseFS(files, "templates/*.html"))
	static, _ := fs.Sub(files, "static")
	c.mux.Handle("GET /ui/static/", http.StripPrefix("/ui/static/", http.FileServerFS(static)))
	c.routes()
	return c
}

func (c *Console) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// Pages hold operators' data: never cached, never framed.
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	c.mux.ServeHTTP(w, r)
}

// page is what every page's template gets.
type page struct {
	Title string
	// Nav names the section shown as current.
	Nav  string
	Data any
	// Error is the API's message to show (never a stack trace).
	Error string
}

// render writes a page with the layout.
func (c *Console) render(w http.ResponseWriter, status int, name string, p page) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(status)
	if err := c.tmpl.ExecuteTemplate(w, name, p); err != nil {
		c.cfg.Log.Error("console page failed to render", zap.String("page", name), zap.Error(err))
	}
}

// fail shows an error page with a message an operator can act on.
func (c *Console) fail(w http.ResponseWriter, status int, msg string) {
	c.render(w, status, "error.html", page{Title: "Error", Error: msg})
}

var funcs = template.FuncMap{
	"since": func(t time.Time) string {
		if t.IsZero() {
			return "never"
		}
		return time.Since(t).Round(time.Second).String() + " ago"
	},
	"pct": func(done, total int) int {
		if total <= 0 {
			return 0
		}
		return done * 100 / total
	},
	"deref": func(p *int) int {
		if p == nil {
			return 0
		}
		return *p
	},
}
