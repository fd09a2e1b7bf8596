// Package config reads wxdomain's settings from the environment and the
// platforms file. Only cmd/ calls it; nothing below cmd reads the environment.
package config

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap/zapcore"

	"github.com/wxdomain/wxdomain/internal/wechat"
	"github.com/wxdomain/wxdomain/tasks"
)

// Config is every setting, with defaults applied.
type Config struct {
	RedisURL        string
	WeChatBaseURL   string
	PlatformsFile   string
	Concurrency     int
	Waiting         int
	RetryBase       time.Duration
	RetryMax        time.Duration
	MaxAttempts     int
	ResultTTL       time.Duration
	MaxDomains      int
	HTTPTimeout     time.Duration
	ShutdownTimeout time.Duration
	TokenMargin     time.Duration
	OperatorPause   time.Duration
	DefaultRate     float64
	DefaultBurst    int
	GlobalRate      float64
	GlobalBurst     int
	LimitMaxWait    time.Duration
	MaxDefer        time.Duration
	PollInterval    time.Duration
	BusyDecrease    float64
	BusyIncrease    float64
	BusyMinFactor   float64
	BulkQueue       string
	HTTPAddr        string
	MetricsPublic   bool
	MaxBody         int
	MetricsAddr     string
	// The HTTP server's limits (serve, dev, a worker's metrics).
	HTTPReadTimeout    time.Duration
	HTTPWriteTimeout   time.Duration
	HTTPIdleTimeout    time.Duration
	HTTPMaxHeaderBytes int
	// TrustedOrigins may send state-changing browser requests besides the
	// server's own origin.
	TrustedOrigins []string
	// PushMaxSkew: a WeChat push whose timestamp is further from now is
	// refused as a replay.
	PushMaxSkew time.Duration
	// RolloutTTL is how long a finished rollout stays readable.
	RolloutTTL time.Duration
	// FanoutBatch is how many changes a rollout's fan-out queues per step.
	FanoutBatch int
	// RedisMinReplicas is how many replicas must confirm an acknowledged
	// write; -1 (the default): 1 with a Sentinel URL, else 0. See
	// MinReplicas.
	RedisMinReplicas int
	// RedisWaitTimeout bounds the wait for replicas.
	RedisWaitTimeout time.Duration
	// Preflight is the preflight mode of changes that name none.
	Preflight tasks.PreflightMode
	// APITokens authenticate the HTTP API; never logged.
	APITokens []Secret
	// Errcode classification of modify_wxa_jump_domain (see worker.Policy).
	RetryCodes  []int
	TokenCodes  []int
	MinuteCodes []int
	DayCodes    []int
	Queue       string
	KeyPrefix   string
	LogLevel    zapcore.Level
	LogFormat   string
	// PlatformsFileFrom is what set PlatformsFile, for LoadPlatformsFrom:
	// a flag's name ("--platforms-file"), WXDOMAIN_PLATFORMS_FILE, or ""
	// when nothing did.
	PlatformsFileFrom string
}

// Default returns the settings used when nothing is set.
func Default() Config {
	return Config{
		RedisURL:        "redis://127.0.0.1:6379/0",
		WeChatBaseURL:   wechat.DefaultBaseURL,
		Concurrency:     20,
		Waiting:         100,
		RetryBase:       2 * time.Second,
		RetryMax:        10 * time.Minute,
		MaxAttempts:     12,
		ResultTTL:       tasks.DefaultResultTTL,
		MaxDomains:      tasks.DefaultMaxDomains,
		HTTPTimeout:     15 * time.Second,
		ShutdownTimeout: 30 * time.Second,
		TokenMargin:     10 * time.Minute,
		OperatorPause:   10 * time.Minute,
		DefaultRate:     5,
		DefaultBurst:    1,
		GlobalBurst:     1,
		LimitMaxWait:    time.Second,
		MaxDefer:        48 * time.Hour,
		PollInterval:    200 * time.Millisecond,
		BusyDecrease:    0.7,
		BusyIncrease:    0.05,
		BusyMinFactor:   0.1,
		RetryCodes:      []int{-1},
		TokenCodes:      []int{40001, 40014, 42001},
		MinuteCodes:     []int{45011},
		DayCodes:        []int{45009},
		BulkQueue:       tasks.QueueBulk,
		HTTPAddr:        "127.0.0.1:8080",
		MaxBody:         1 << 20,
		// A 1 MiB body at 35 KB/s; a 60s long poll plus slack.
		HTTPReadTimeout:    30 * time.Second,
		HTTPWriteTimeout:   90 * time.Second,
		HTTPIdleTimeout:    2 * time.Minute,
		HTTPMaxHeaderBytes: 64 << 10,
		PushMaxSkew:        5 * time.Minute,
		RolloutTTL:         30 * 24 * time.Hour,
		FanoutBatch:        500,
		RedisMinReplicas:   -1,
		RedisWaitTimeout:   time.Second,
		Preflight:          tasks.PreflightWarn,
		Queue:              tasks.QueueDefault,
		KeyPrefix:          tasks.DefaultPrefix,
		LogLevel:           zapcore.InfoLevel,
		LogFormat:          "json",
	}
}

// Setting describes one environment variable, for errors and the README.
type Setting struct {
	Env   string
	parse func(c *Config, v string) error
}

// Settings lists every environment variable wxdomain reads.
var Settings = []Setting{
	{"WXDOMAIN_REDIS_URL", func(c *Config, v string) error { c.RedisURL = v; return checkRedisURL(v) }},
	{"WXDOMAIN_WECHAT_BASE_URL", func(c *Config, v string) error { c.WeChatBaseURL = v; return checkHTTPURL(v) }},
	{"WXDOMAIN_PLATFORMS_FILE", func(c *Config, v string) error { c.PlatformsFile = v; return nil }},
	{"WXDOMAIN_CONCURRENCY", intSetting(func(c *Config) *int { return &c.Concurrency }, 1, 10000)},
	{"WXDOMAIN_WAITING", intSetting(func(c *Config) *int { return &c.Waiting }, 0, 100000)},
	{"WXDOMAIN_RETRY_BASE", durationSetting(func(c *Config) *time.Duration { return &c.RetryBase }, time.Millisecond)},
	{"WXDOMAIN_RETRY_MAX", durationSetting(func(c *Config) *time.Duration { return &c.RetryMax }, time.Millisecond)},
	{"WXDOMAIN_MAX_ATTEMPTS", intSetting(func(c *Config) *int { return &c.MaxAttempts }, 1, 100)},
	{"WXDOMAIN_RESULT_TTL", durationSetting(func(c *Config) *time.Duration { return &c.ResultTTL }, time.Minute)},
	{"WXDOMAIN_MAX_DOMAINS", intSetting(func(c *Config) *int { return &c.MaxDomains }, 1, 10000)},
	{"WXDOMAIN_HTTP_TIMEOUT", durationSetting(func(c *Config) *time.Duration { return &c.HTTPTimeout }, 100*time.Millisecond)},
	{"WXDOMAIN_SHUTDOWN_TIMEOUT", durationSetting(func(c *Config) *time.Duration { return &c.ShutdownTimeout }, time.Second)},
	{"WXDOMAIN_TOKEN_REFRESH_MARGIN", durationSetting(func(c *Config) *time.Duration { return &c.TokenMargin }, 0)},
	{"WXDOMAIN_OPERATOR_PAUSE", durationSetting(func(c *Config) *time.Duration { return &c.OperatorPause }, time.Second)},
	{"WXDOMAIN_DEFAULT_RATE", floatSetting(func(c *Config) *float64 { return &c.DefaultRate })},
	{"WXDOMAIN_DEFAULT_BURST", intSetting(func(c *Config) *int { return &c.DefaultBurst }, 1, 1000)},
	{"WXDOMAIN_GLOBAL_RATE", floatSetting(func(c *Config) *float64 { return &c.GlobalRate })},
	{"WXDOMAIN_GLOBAL_BURST", intSetting(func(c *Config) *int { return &c.GlobalBurst }, 1, 1000)},
	{"WXDOMAIN_LIMIT_MAX_WAIT", durationSetting(func(c *Config) *time.Duration { return &c.LimitMaxWait }, 0)},
	{"WXDOMAIN_MAX_DEFER", durationSetting(func(c *Config) *time.Duration { return &c.MaxDefer }, time.Minute)},
	{"WXDOMAIN_POLL_INTERVAL", durationSetting(func(c *Config) *time.Duration { return &c.PollInterval }, 10*time.Millisecond)},
	{"WXDOMAIN_BUSY_DECREASE", fractionSetting(func(c *Config) *float64 { return &c.BusyDecrease })},
	{"WXDOMAIN_BUSY_INCREASE", fractionSetting(func(c *Config) *float64 { return &c.BusyIncrease })},
	{"WXDOMAIN_BUSY_MIN_FACTOR", fractionSetting(func(c *Config) *float64 { return &c.BusyMinFactor })},
	{"WXDOMAIN_ERRCODES_RETRY", codesSetting(func(c *Config) *[]int { return &c.RetryCodes })},
	{"WXDOMAIN_ERRCODES_TOKEN", codesSetting(func(c *Config) *[]int { return &c.TokenCodes })},
	{"WXDOMAIN_ERRCODES_NEXT_MINUTE", codesSetting(func(c *Config) *[]int { return &c.MinuteCodes })},
	{"WXDOMAIN_ERRCODES_NEXT_DAY", codesSetting(func(c *Config) *[]int { return &c.DayCodes })},
	{"WXDOMAIN_HTTP_ADDR", func(c *Config, v string) error {
		if _, _, err := net.SplitHostPort(v); err != nil {
			return fmt.Errorf("%q: want host:port, such as 127.0.0.1:8080", v)
		}
		c.HTTPAddr = v
		return nil
	}},
	{"WXDOMAIN_MAX_BODY", intSetting(func(c *Config) *int { return &c.MaxBody }, 1024, 64<<20)},
	{"WXDOMAIN_HTTP_READ_TIMEOUT", durationSetting(func(c *Config) *time.Duration { return &c.HTTPReadTimeout }, time.Second)},
	{"WXDOMAIN_HTTP_WRITE_TIMEOUT", durationSetting(func(c *Config) *time.Duration { return &c.HTTPWriteTimeout }, 10*time.Second)},
	{"WXDOMAIN_HTTP_IDLE_TIMEOUT", durationSetting(func(c *Config) *time.Duration { return &c.HTTPIdleTimeout }, time.Second)},
	{"WXDOMAIN_HTTP_MAX_HEADER_BYTES", intSetting(func(c *Config) *int { return &c.HTTPMaxHeaderBytes }, 4<<10, 1<<20)},
	{"WXDOMAIN_METRICS_PUBLIC", func(c *Config, v string) error {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return fmt.Errorf("%q: want true or false", v)
		}
		c.MetricsPublic = b
		return nil
	}},
	{"WXDOMAIN_METRICS_ADDR", func(c *Config, v string) error {
		if _, _, err := net.SplitHostPort(v); err != nil {
			return fmt.Errorf("%q: want host:port, such as 127.0.0.1:9100", v)
		}
		c.MetricsAddr = v
		return nil
	}},
	{"WXDOMAIN_API_TOKENS", func(c *Config, v string) error {
		c.APITokens = nil
		for i, t := range strings.Split(v, ",") {
			t = strings.TrimSpace(t)
			if len(t) < 16 {
				// Never echo the value: it is a secret.
				return fmt.Errorf("token %d is shorter than 16 characters", i+1)
			}
			c.APITokens = append(c.APITokens, Secret(t))
		}
		return nil
	}},
	{"WXDOMAIN_PUSH_MAX_SKEW", durationSetting(func(c *Config) *time.Duration { return &c.PushMaxSkew }, 10*time.Second)},
	{"WXDOMAIN_ROLLOUT_TTL", durationSetting(func(c *Config) *time.Duration { return &c.RolloutTTL }, time.Second)},
	{"WXDOMAIN_FANOUT_BATCH", intSetting(func(c *Config) *int { return &c.FanoutBatch }, 1, 5000)},
	{"WXDOMAIN_REDIS_MIN_REPLICAS", intSetting(func(c *Config) *int { return &c.RedisMinReplicas }, 0, 10)},
	{"WXDOMAIN_REDIS_WAIT_TIMEOUT", func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		// Below the Redis client's 3s read timeout, which a WAIT in a
		// pipeline is read under.
		if err != nil || d < 10*time.Millisecond || d > 2*time.Second {
			return fmt.Errorf("%q: want a duration from 10ms to 2s, such as 1s", v)
		}
		c.RedisWaitTimeout = d
		return nil
	}},
	{"WXDOMAIN_PREFLIGHT", func(c *Config, v string) error {
		m := tasks.PreflightMode(v)
		if v == "" || !m.Valid() {
			return fmt.Errorf("%q: want enforce, warn or off", v)
		}
		c.Preflight = m
		return nil
	}},
	{"WXDOMAIN_TRUSTED_ORIGINS", func(c *Config, v string) error {
		c.TrustedOrigins = nil
		for _, o := range strings.Split(v, ",") {
			o = strings.TrimSpace(o)
			u, err := url.Parse(o)
			if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
				return fmt.Errorf("%q: want origins such as https://ops.example.com (scheme and host, no path), comma-separated", o)
			}
			c.TrustedOrigins = append(c.TrustedOrigins, o)
		}
		return nil
	}},
	{"WXDOMAIN_BULK_QUEUE", func(c *Config, v string) error { c.BulkQueue = v; return checkName(v) }},
	{"WXDOMAIN_QUEUE", func(c *Config, v string) error { c.Queue = v; return checkName(v) }},
	{"WXDOMAIN_KEY_PREFIX", func(c *Config, v string) error { c.KeyPrefix = v; return checkName(v) }},
	{"WXDOMAIN_LOG_LEVEL", func(c *Config, v string) error {
		l, err := zapcore.ParseLevel(v)
		if err != nil {
			return fmt.Errorf("%q: want debug, info, warn or error", v)
		}
		c.LogLevel = l
		return nil
	}},
	{"WXDOMAIN_LOG_FORMAT", func(c *Config, v string) error {
		if v != "json" && v != "console" {
			return fmt.Errorf("%q: want json or console", v)
		}
		c.LogFormat = v
		return nil
	}},
}

// MinReplicas is how many Redis replicas must confirm an acknowledged
// write: WXDOMAIN_REDIS_MIN_REPLICAS, or by default 1 when the Redis URL
// names Sentinels (a failover is then expected, and a replica is there to
// confirm) and 0 otherwise (a lone Redis has no replica to wait for).
func (c Config) MinReplicas() int {
	if c.RedisMinReplicas >= 0 {
		return c.RedisMinReplicas
	}
	if IsSentinelURL(c.RedisURL) {
		return 1
	}
	return 0
}

// FromEnv reads the settings; unset or empty variables keep their defaults.
// The error names every bad setting.
func FromEnv(getenv func(string) string) (Config, error) {
	return FromSources(getenv, nil)
}

// Flag is a setting given on the command line: Name as the user typed it
// ("--log-format") and its Value ("" means the flag was not given).
type Flag struct {
	Name  string
	Value string
}

// FromSources reads the settings from the environment and from flags, keyed
// by the environment variable they override (e.g. "WXDOMAIN_LOG_FORMAT":
// {Name: "--log-format", Value: "text"}). A flag with a value wins over the
// variable, and its error names the flag and the value as typed:
//
//	--log-format "text": want json or console
//
// while a variable's error reads as FromEnv's (WXDOMAIN_LOG_FORMAT: ...).
// A Redis URL is shown with its passwords masked, API tokens never. A key of
// flags that is not a setting is an error. The error names every bad setting.
func FromSources(getenv func(string) string, flags map[string]Flag) (Config, error) {
	c := Default()
	var errs []error
	known := make(map[string]bool, len(Settings))
	for _, s := range Settings {
		known[s.Env] = true
		v, from := strings.TrimSpace(getenv(s.Env)), s.Env
		f, ok := flags[s.Env]
		if fv := strings.TrimSpace(f.Value); ok && fv != "" {
			v, from = fv, f.Name
		}
		if v == "" {
			continue
		}
		if s.Env == PlatformsFileEnv {
			c.PlatformsFileFrom = from
		}
		if err := s.parse(&c, v); err != nil {
			if from == s.Env {
				errs = append(errs, fmt.Errorf("%s: %w", s.Env, err))
			} else {
				errs = append(errs, flagError(from, s.Env, v, err))
			}
		}
	}
	for _, env := range slices.Sorted(maps.Keys(flags)) {
		if !known[env] {
			errs = append(errs, fmt.Errorf("flag %s: %s is not a setting wxdomain reads", flags[env].Name, env))
		}
	}
	if err := c.Check(); err != nil {
		errs = append(errs, err)
	}
	return c, errors.Join(errs...)
}

// flagError is a setting's error for a value given as flag name: the flag
// and the value as typed (a Redis URL's passwords masked, tokens not shown),
// then what is wanted.
func flagError(name, env, v string, err error) error {
	msg := strings.TrimPrefix(err.Error(), strconv.Quote(v)+": ")
	switch env {
	case "WXDOMAIN_API_TOKENS":
		return fmt.Errorf("%s: %s", name, msg)
	case "WXDOMAIN_REDIS_URL":
		shown := redactAnyURL(v)
		return fmt.Errorf("%s %q: %s", name, shown, strings.ReplaceAll(msg, v, shown))
	}
	return fmt.Errorf("%s %q: %s", name, tasks.Truncate(v), msg)
}

var queryPasswordRe = regexp.MustCompile(`(?i)(password=)[^&#]*`)

// redactAnyURL is RedactURL, also for a URL url.Parse refuses: everything
// between the scheme's "://" and the last "@" after the user name is
// masked, and so is any password= in the query.
func redactAnyURL(v string) string {
	if _, err := url.Parse(v); err == nil {
		return RedactURL(v)
	}
	if i := strings.Index(v, "://"); i >= 0 {
		rest := v[i+3:]
		if at := strings.LastIndex(rest, "@"); at >= 0 {
			user := "xxxxx"
			if c := strings.Index(rest[:at], ":"); c >= 0 {
				user = rest[:c] + ":xxxxx"
			}
			v = v[:i+3] + user + rest[at:]
		}
	}
	return queryPasswordRe.ReplaceAllString(v, "${1}xxxxx")
}

// LongPollMax is the longest long poll the API grants: 60s, and always
// ending 5s before the server's write timeout cuts the answer.
func (c Config) LongPollMax() time.Duration {
	return min(60*time.Second, c.HTTPWriteTimeout-5*time.Second)
}

// Check validates relations between settings (after flags override them).
func (c Config) Check() error {
	if c.Queue == c.BulkQueue {
		return fmt.Errorf("WXDOMAIN_BULK_QUEUE must differ from WXDOMAIN_QUEUE (%s)", c.Queue)
	}
	if c.RetryMax < c.RetryBase {
		return fmt.Errorf("WXDOMAIN_RETRY_MAX (%s) is shorter than WXDOMAIN_RETRY_BASE (%s)", c.RetryMax, c.RetryBase)
	}
	return nil
}

func intSetting(field func(*Config) *int, lo, hi int) func(*Config, string) error {
	return func(c *Config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			return fmt.Errorf("%q: want a whole number from %d to %d", v, lo, hi)
		}
		*field(c) = n
		return nil
	}
}

func floatSetting(field func(*Config) *float64) func(*Config, string) error {
	return func(c *Config, v string) error {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f < 0 || f > 1e6 || f != f {
			return fmt.Errorf("%q: want calls per second, 0 or more (fractions allowed; 0 means no limit)", v)
		}
		*field(c) = f
		return nil
	}
}

func fractionSetting(field func(*Config) *float64) func(*Config, string) error {
	return func(c *Config, v string) error {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || !(f > 0 && f <= 1) {
			return fmt.Errorf("%q: want a fraction above 0 and at most 1", v)
		}
		*field(c) = f
		return nil
	}
}

// codesSetting reads a comma-separated errcode list; "none" empties it.
func codesSetting(field func(*Config) *[]int) func(*Config, string) error {
	return func(c *Config, v string) error {
		codes := []int{}
		if v != "none" {
			for _, part := range strings.Split(v, ",") {
				n, err := strconv.Atoi(strings.TrimSpace(part))
				if err != nil {
					return fmt.Errorf("%q: want comma-separated errcodes such as -1,45011, or none", v)
				}
				codes = append(codes, n)
			}
		}
		*field(c) = codes
		return nil
	}
}

func durationSetting(field func(*Config) *time.Duration, lo time.Duration) func(*Config, string) error {
	return func(c *Config, v string) error {
		d, err := time.ParseDuration(v)
		if err != nil || d < lo {
			return fmt.Errorf("%q: want a duration such as 30s, 10m or 168h, at least %s", v, lo)
		}
		*field(c) = d
		return nil
	}
}

func checkHTTPURL(v string) error {
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%q: want http(s)://host[:port]", v)
	}
	return nil
}

func checkName(v string) error {
	if len(v) > 64 || strings.ContainsFunc(v, func(r rune) bool { return r <= ' ' || r == '{' || r == '}' || r > 0x7e }) {
		return fmt.Errorf("%q: want at most 64 printable ASCII characters without spaces or braces", v)
	}
	return nil
}
