package config_test

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/wxdomain/wxdomain/internal/config"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestDefaults(t *testing.T) {
	t.Parallel()
	c, err := config.FromEnv(env(nil))
	require.NoError(t, err)
	assert.Equal(t, "redis://127.0.0.1:6379/0", c.RedisURL)
	assert.Equal(t, "https://api.weixin.qq.com", c.WeChatBaseURL)
	assert.Equal(t, 20, c.Concurrency)
	assert.Equal(t, 2*time.Second, c.RetryBase)
	assert.Equal(t, 10*time.Minute, c.RetryMax)
	assert.Equal(t, 12, c.MaxAttempts)
	assert.Equal(t, 168*time.Hour, c.ResultTTL)
	assert.Equal(t, 200, c.MaxDomains)
	assert.Equal(t, []int{-1}, c.RetryCodes)
	assert.Equal(t, []int{40001, 40014, 42001}, c.TokenCodes)

	c, err = config.FromEnv(env(map[string]string{"WXDOMAIN_ERRCODES_RETRY": "-1, 45011", "WXDOMAIN_ERRCODES_NEXT_MINUTE": "none"}))
	require.NoError(t, err)
	assert.Equal(t, []int{-1, 45011}, c.RetryCodes)
	assert.Empty(t, c.MinuteCodes)
}

func TestBadSettingsAreNamed(t *testing.T) {
	t.Parallel()
	tests := []struct {
		give string
		val  string
		want string
	}{
		{"WXDOMAIN_REDIS_URL", "mysql://x", `WXDOMAIN_REDIS_URL: scheme "mysql"`},
		{"WXDOMAIN_REDIS_URL", "redis-sentinel://a:1,b:2", "needs ?master=NAME"},
		{"WXDOMAIN_WECHAT_BASE_URL", "api.weixin.qq.com", "WXDOMAIN_WECHAT_BASE_URL"},
		{"WXDOMAIN_CONCURRENCY", "0", "WXDOMAIN_CONCURRENCY: \"0\": want a whole number from 1"},
		{"WXDOMAIN_CONCURRENCY", "many", "WXDOMAIN_CONCURRENCY"},
		{"WXDOMAIN_RETRY_BASE", "2", "WXDOMAIN_RETRY_BASE: \"2\": want a duration"},
		{"WXDOMAIN_MAX_ATTEMPTS", "-3", "WXDOMAIN_MAX_ATTEMPTS"},
		{"WXDOMAIN_RESULT_TTL", "1s", "WXDOMAIN_RESULT_TTL"},
		{"WXDOMAIN_LOG_LEVEL", "loud", "WXDOMAIN_LOG_LEVEL"},
		{"WXDOMAIN_LOG_FORMAT", "xml", "WXDOMAIN_LOG_FORMAT"},
		{"WXDOMAIN_ERRCODES_RETRY", "-1,busy", "WXDOMAIN_ERRCODES_RETRY"},
		{"WXDOMAIN_BUSY_DECREASE", "1.5", "WXDOMAIN_BUSY_DECREASE: \"1.5\": want a fraction"},
		{"WXDOMAIN_GLOBAL_RATE", "-2", "WXDOMAIN_GLOBAL_RATE"},
		{"WXDOMAIN_BULK_QUEUE", "wxdomain", "must differ from WXDOMAIN_QUEUE"},
		{"WXDOMAIN_RETRY_MAX", "1s", "WXDOMAIN_RETRY_MAX (1s) is shorter than WXDOMAIN_RETRY_BASE"},
	}
	for _, tt := range tests {
		t.Run(tt.give+"="+tt.val, func(t *testing.T) {
			_, err := config.FromEnv(env(map[string]string{tt.give: tt.val}))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

func TestFromSources(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		giveEnv   map[string]string
		giveFlags map[string]config.Flag
		want      string // the whole error, or "" for none
	}{
		{"flag log format", nil,
			map[string]config.Flag{"WXDOMAIN_LOG_FORMAT": {Name: "--log-format", Value: "text"}},
			`--log-format "text": want json or console`},
		{"flag wins over a bad variable", map[string]string{"WXDOMAIN_LOG_FORMAT": "xml"},
			map[string]config.Flag{"WXDOMAIN_LOG_FORMAT": {Name: "--log-format", Value: "console"}}, ""},
		{"bad flag over a good variable", map[string]string{"WXDOMAIN_LOG_LEVEL": "info"},
			map[string]config.Flag{"WXDOMAIN_LOG_LEVEL": {Name: "--log-level", Value: "loud"}},
			`--log-level "loud": want debug, info, warn or error`},
		{"empty flag leaves the variable", map[string]string{"WXDOMAIN_LOG_FORMAT": "xml"},
			map[string]config.Flag{"WXDOMAIN_LOG_FORMAT": {Name: "--log-format", Value: ""}},
			`WXDOMAIN_LOG_FORMAT: "xml": want json or console`},
		{"variable named as before", map[string]string{"WXDOMAIN_CONCURRENCY": "0"}, nil,
			`WXDOMAIN_CONCURRENCY: "0": want a whole number from 1 to 10000`},
		{"flag redis url", nil,
			map[string]config.Flag{"WXDOMAIN_REDIS_URL": {Name: "--redis-url", Value: "mysql://h:1/0"}},
			`--redis-url "mysql://h:1/0": scheme "mysql": want redis://, rediss:// or redis-sentinel://`},
		{"flag redis url with a password", nil,
			map[string]config.Flag{"WXDOMAIN_REDIS_URL": {Name: "--redis-url", Value: "mysql://u:hunter2@h:1/0"}},
			`--redis-url "mysql://u:xxxxx@h:1/0": scheme "mysql": want redis://, rediss:// or redis-sentinel://`},
		{"flag unparsable redis url with a password", nil,
			map[string]config.Flag{"WXDOMAIN_REDIS_URL": {Name: "--redis-url", Value: "redis://:hunter2@host:notaport/x"}},
			`--redis-url "redis://:xxxxx@host:notaport/x": not a valid URL`},
		{"flag sentinel url with a query password", nil,
			map[string]config.Flag{"WXDOMAIN_REDIS_URL": {Name: "--redis-url", Value: "redis://h:26379/0?master_name=m&password=hunter2&bogus=1"}},
			`--redis-url "redis://h:26379/0?bogus=1&master_name=m&password=xxxxx": `},
		{"flag names a setting that is not one", nil,
			map[string]config.Flag{"WXDOMAIN_COLOUR": {Name: "--colour", Value: "red"}},
			"flag --colour: WXDOMAIN_COLOUR is not a setting wxdomain reads"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := config.FromSources(env(tt.giveEnv), tt.giveFlags)
			if tt.want == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			if strings.HasSuffix(tt.want, ": ") {
				assert.True(t, strings.HasPrefix(err.Error(), tt.want), err.Error())
			} else {
				assert.Equal(t, tt.want, err.Error())
			}
			assert.NotContains(t, err.Error(), "hunter2")
		})
	}
}

func TestFromSourcesValues(t *testing.T) {
	t.Parallel()
	c, err := config.FromSources(env(map[string]string{
		"WXDOMAIN_LOG_FORMAT":     "json",
		"WXDOMAIN_PLATFORMS_FILE": "/etc/env.yaml",
		"WXDOMAIN_REDIS_URL":      "redis://env:6379/0",
	}), map[string]config.Flag{
		"WXDOMAIN_LOG_FORMAT":     {Name: "--log-format", Value: " console "},
		"WXDOMAIN_PLATFORMS_FILE": {Name: "--platforms-file", Value: "/etc/flag.yaml"},
		"WXDOMAIN_REDIS_URL":      {Name: "--redis-url", Value: ""},
	})
	require.NoError(t, err)
	assert.Equal(t, "console", c.LogFormat)
	assert.Equal(t, "/etc/flag.yaml", c.PlatformsFile)
	assert.Equal(t, "--platforms-file", c.PlatformsFileFrom)
	assert.Equal(t, "redis://env:6379/0", c.RedisURL)

	c, err = config.FromEnv(env(map[string]string{"WXDOMAIN_PLATFORMS_FILE": "/etc/env.yaml"}))
	require.NoError(t, err)
	assert.Equal(t, "WXDOMAIN_PLATFORMS_FILE", c.PlatformsFileFrom)

	c, err = config.FromEnv(env(nil))
	require.NoError(t, err)
	assert.Empty(t, c.PlatformsFileFrom)
}

func TestSettingErrorsNeverEchoSecrets(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		giveEnv   map[string]string
		giveFlags map[string]config.Flag
		want      string
	}{
		{"short api token", map[string]string{"WXDOMAIN_API_TOKENS": "0123456789abcdef,hunter2"}, nil,
			"WXDOMAIN_API_TOKENS: token 2 is shorter than 16 characters"},
		{"short api token as a flag", nil,
			map[string]config.Flag{"WXDOMAIN_API_TOKENS": {Name: "--api-tokens", Value: "hunter2"}},
			"--api-tokens: token 1 is shorter than 16 characters"},
		{"redis url, bad port", map[string]string{"WXDOMAIN_REDIS_URL": "redis://:hunter2@host:notaport/x"}, nil,
			"WXDOMAIN_REDIS_URL: not a valid URL"},
		{"redis url, bad scheme", map[string]string{"WXDOMAIN_REDIS_URL": "mysql://u:hunter2@h/0"}, nil,
			`WXDOMAIN_REDIS_URL: scheme "mysql"`},
		{"sentinel url without master", map[string]string{"WXDOMAIN_REDIS_URL": "redis-sentinel://:hunter2@a:1,b:2/0"}, nil,
			"needs ?master=NAME"},
		{"sentinel url, bad db", nil,
			map[string]config.Flag{"WXDOMAIN_REDIS_URL": {Name: "--redis-url", Value: "redis-sentinel://:hunter2@a:1,b:2/x?master=m"}},
			`--redis-url "redis-sentinel://:xxxxx@a:1,b:2/x?master=m": database "x" is not a number`},
		{"unparsable url, password with an @", nil,
			map[string]config.Flag{"WXDOMAIN_REDIS_URL": {Name: "--redis-url", Value: "redis://u:hun@ter2@host:bad/0"}},
			`--redis-url "redis://u:xxxxx@host:bad/0"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := config.FromSources(env(tt.giveEnv), tt.giveFlags)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			assert.NotContains(t, err.Error(), "hunter2")
			assert.NotContains(t, err.Error(), "ter2")
		})
	}
}

func TestRedisURLPasswordNotInErrors(t *testing.T) {
	t.Parallel()
	_, err := config.FromEnv(env(map[string]string{"WXDOMAIN_REDIS_URL": "redis://:hunter2@host:notaport/x"}))
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "hunter2")
	assert.Equal(t, "redis://:xxxxx@host:6379/0", config.RedactURL("redis://:hunter2@host:6379/0"))
}

func TestOpenRedisSchemes(t *testing.T) {
	t.Parallel()
	for _, u := range []string{
		"redis://127.0.0.1:6379/3",
		"rediss://user:pw@example.com:6380/0",
		"redis://127.0.0.1:26379/0?master_name=mymaster&addr=127.0.0.1:26380",
		"redis-sentinel://:pw@127.0.0.1:26379,127.0.0.1:26380/2?master=mymaster",
	} {
		c, err := config.OpenRedis(u)
		require.NoError(t, err, u)
		require.NoError(t, c.Close())
	}
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "platforms.yaml")
	require.NoError(t, os.WriteFile(p, []byte(body), 0o600))
	return p
}

func TestPlatformsFile(t *testing.T) {
	t.Parallel()
	p, err := config.LoadPlatforms(writeFile(t, `
platforms:
  - appid: wx1234567890abcdef
    secret_env: WX1234_SECRET
    rate: 5
  - appid: wxfedcba0987654321
    secret: "inline-secret"
    rate: 0.5
`))
	require.NoError(t, err)
	assert.True(t, p.Has("wx1234567890abcdef"))
	assert.False(t, p.Has("wx0"))

	err = p.ResolveSecrets(env(nil))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "WX1234_SECRET")

	require.NoError(t, p.ResolveSecrets(env(map[string]string{"WX1234_SECRET": "from-env"})))
	pl, ok := p.Get("wx1234567890abcdef")
	require.True(t, ok)
	assert.Equal(t, "from-env", pl.Secret.Reveal())
	assert.Equal(t, 5.0, pl.Rate)
}

// goWords are what an error about the user's file or settings must not say:
// Go's names for types, and yaml's for nodes.
var goWords = []string{"config.Platform", "float64", "int64", "!!seq", "!!str", "!!map", "!!int", "struct {", "unmarshal", "yaml:", "[]config", "<nil>"}

func assertSpeaksUser(t *testing.T, msg string) {
	t.Helper()
	for _, w := range goWords {
		assert.NotContains(t, msg, w)
	}
}

func TestPlatformsFileErrors(t *testing.T) {
	t.Parallel()
	const appid = "wx1234567890abcdef"
	const fields = "the fields are appid, secret, secret_env, rate, burst, token, encoding_aes_key"
	const shape = "the file must be a mapping with a \"platforms\" list:\n  platforms:\n    - appid: wx1234567890abcdef\n      secret_env: WX1234_SECRET\n      rate: 5"
	tests := []struct {
		name string
		give string
		want []string
	}{
		{"unknown field", "platforms:\n  - appid: " + appid + "\n    secret: s\n    rate_limit: 3\n",
			[]string{`line 4: platforms[0]: unknown field "rate_limit"; ` + fields}},
		{"unknown field in a flow mapping", "platforms:\n  - {appid: " + appid + ", secret: s, sekret: x}\n",
			[]string{`line 2: platforms[0]: unknown field "sekret"; ` + fields}},
		{"unknown field in the second entry", "platforms:\n  - {appid: " + appid + ", secret: s}\n  - {appid: wxfedcba0987654321, secret: s, Rate: 1}\n",
			[]string{`line 3: platforms[1]: unknown field "Rate"`}},
		{"unknown top-level key", "platform:\n  - {appid: " + appid + ", secret: s}\n",
			[]string{`line 1: unknown top-level key "platform"; the file has one top-level key, "platforms"`}},
		{"unknown top-level key beside platforms", "platforms:\n  - {appid: " + appid + ", secret: s}\ndefaults: {rate: 1}\n",
			[]string{`line 3: unknown top-level key "defaults"; the file has one top-level key, "platforms"`}},
		{"top-level list", "- appid: " + appid + "\n  secret_env: WX1234_SECRET\n",
			[]string{"line 1: found a list at the top, but " + shape}},
		{"top-level text", "wx1234567890abcdef\n", []string{"line 1: found a single value at the top, but " + shape}},
		{"empty file", "", []string{"the file is empty; " + shape}},
		{"only a comment", "# nothing yet\n", []string{"the file is empty; " + shape}},
		{"platforms is a mapping", "platforms:\n  appid: " + appid + "\n  secret: s\n",
			[]string{`line 2: platforms: found a mapping, but it must be a list, each entry starting with "- appid:"; ` + shape}},
		{"entry is text", "platforms:\n  - " + appid + "\n", []string{"line 2: platforms[0]: found a single value, but each entry is a mapping of fields such as:\n    - appid: wx1234567890abcdef"}},
		{"rate is text", "platforms:\n  - {appid: " + appid + ", secret: s, rate: fast}\n",
			[]string{`line 2: platforms[0].rate "fast": want a number of calls per second, such as 5 or 0.5`}},
		{"rate is quoted", "platforms:\n  - {appid: " + appid + ", secret: s, rate: \"5\"}\n",
			[]string{`platforms[0].rate "5": want a number of calls per second`}},
		{"rate is a list", "platforms:\n  - {appid: " + appid + ", secret: s, rate: [1]}\n",
			[]string{`platforms[0].rate (a list): want a number`}},
		{"rate is not a number", "platforms:\n  - {appid: " + appid + ", secret: s, rate: .nan}\n",
			[]string{`platforms[0].rate ".nan": want a number`}},
		{"burst is a fraction", "platforms:\n  - {appid: " + appid + ", secret: s, burst: 1.5}\n",
			[]string{`line 2: platforms[0].burst "1.5": want a whole number, such as 1`}},
		{"burst is text", "platforms:\n  - {appid: " + appid + ", secret: s, burst: lots}\n",
			[]string{`platforms[0].burst "lots": want a whole number`}},
		{"appid is a list", "platforms:\n  - {appid: [" + appid + "], secret: s}\n",
			[]string{"line 2: platforms[0].appid: found a list, but want text"}},
		{"appid is a YAML integer", "platforms:\n  - {appid: 12345, secret: s}\n",
			[]string{`line 2: platforms[0].appid "12345": not a component appid: want "wx" followed by 16 lower-case hex digits`}},
		{"appid missing", "platforms:\n  - {secret: s}\n",
			[]string{`line 2: platforms[0]: appid is required: want "wx" followed by 16 lower-case hex digits`}},
		{"field given twice", "platforms:\n  - appid: " + appid + "\n    secret: s\n    appid: " + appid + "\n",
			[]string{"line 4: platforms[0]: appid is given twice (first on line 2)"}},
		{"every bad field named", "platforms:\n  - {appid: " + appid + ", secret: s, rate: fast, burst: x, colour: red}\n",
			[]string{"platforms[0].rate", "platforms[0].burst", `unknown field "colour"`}},
		{"merged unknown field", "base: &b {rate: 1, ratelimit: 2}\nplatforms:\n  - {<<: *b, appid: " + appid + ", secret: s}\n",
			[]string{`unknown top-level key "base"`, `line 1: platforms[0]: unknown field "ratelimit"`}},
		{"no platforms", "platforms: []\n", []string{`line 1: no platforms listed: the "platforms" list is empty`}},
		{"platforms null", "platforms:\n", []string{"no platforms listed"}},
		{"duplicate", "platforms:\n  - {appid: " + appid + ", secret: s}\n  - {appid: " + appid + ", secret: s}\n",
			[]string{"line 3: platforms[1].appid " + appid + ": listed twice (first as platforms[0], line 2)"}},
		{"no secret", "platforms:\n  - {appid: " + appid + "}\n", []string{"line 2: platforms[0] (" + appid + "): secret_env (or secret) is required"}},
		{"both secrets", "platforms:\n  - {appid: " + appid + ", secret: s, secret_env: S}\n", []string{"not both"}},
		{"bad appid", "platforms:\n  - {appid: 'wx 1', secret: s}\n", []string{"platforms[0].appid"}},
		{"internal key name as appid", "platforms:\n  - {appid: _global, secret: s}\n", []string{`platforms[0].appid "_global": not a component appid`}},
		{"short appid", "platforms:\n  - {appid: wx1, secret: s}\n", []string{`platforms[0].appid "wx1": not a component appid`}},
		{"upper-case appid", "platforms:\n  - {appid: WX1234567890ABCDEF, secret: s}\n", []string{"16 lower-case hex digits"}},
		{"appid with a key separator", "platforms:\n  - {appid: 'wx1234567890abcde:', secret: s}\n", []string{"not a component appid"}},
		{"negative rate", "platforms:\n  - {appid: " + appid + ", secret: s, rate: -1}\n", []string{"line 2: platforms[0] (" + appid + "): rate -1 must not be negative"}},
		{"not yaml", "platforms: [", []string{"line 1: not valid YAML: "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := writeFile(t, tt.give)
			_, err := config.LoadPlatforms(path)
			require.Error(t, err)
			msg := err.Error()
			prefix := "WXDOMAIN_PLATFORMS_FILE " + path + ": "
			require.True(t, strings.HasPrefix(msg, prefix), msg)
			for _, w := range tt.want {
				assert.Contains(t, msg, w)
			}
			// The path itself ends in .yaml: look past it.
			assertSpeaksUser(t, strings.TrimPrefix(msg, prefix))
		})
	}
}

func TestPlatformsFileAccepted(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name      string
		give      string
		wantRate  float64
		wantBurst int
	}{
		{"integer rate", "platforms:\n  - {appid: wx1234567890abcdef, secret: s, rate: 5}\n", 5, 0},
		{"fraction rate, whole burst", "platforms:\n  - {appid: wx1234567890abcdef, secret: s, rate: 0.5, burst: 2}\n", 0.5, 2},
		{"burst written as 2.0", "platforms:\n  - {appid: wx1234567890abcdef, secret: s, burst: 2.0}\n", 0, 2},
		{"empty rate", "platforms:\n  - appid: wx1234567890abcdef\n    secret: s\n    rate:\n", 0, 0},
		{"merge key", "platforms:\n  - &d {appid: wxfedcba0987654321, secret: s, rate: 3, burst: 4}\n  - {<<: *d, appid: wx1234567890abcdef, burst: 1}\n", 3, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p, err := config.ParsePlatforms([]byte(tt.give))
			require.NoError(t, err)
			pl, ok := p.Get("wx1234567890abcdef")
			require.True(t, ok)
			assert.Equal(t, tt.wantRate, pl.Rate)
			assert.Equal(t, tt.wantBurst, pl.Burst)
		})
	}
}

func TestPlatformsFileNeverQuotesSecrets(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		give string
	}{
		{"secret is a list", "platforms:\n  - {appid: wx1234567890abcdef, secret: [hunter2]}\n"},
		{"token is a mapping", "platforms:\n  - {appid: wx1234567890abcdef, secret: s, token: {a: hunter2}, encoding_aes_key: k}\n"},
		{"short aes key", "platforms:\n  - {appid: wx1234567890abcdef, secret: s, token: hunter2, encoding_aes_key: hunter2}\n"},
		{"both secrets", "platforms:\n  - {appid: wx1234567890abcdef, secret: hunter2, secret_env: S}\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := config.ParsePlatforms([]byte(tt.give))
			require.Error(t, err)
			assert.NotContains(t, err.Error(), "hunter2")
		})
	}
}

func TestLoadPlatformsFrom(t *testing.T) {
	t.Parallel()
	good := writeFile(t, "platforms:\n  - {appid: wx1234567890abcdef, secret_env: S}\n")
	bad := writeFile(t, "platforms:\n  - {appid: wx1234567890abcdef, secret_env: S, rate_limit: 1}\n")
	dir := t.TempDir()
	tests := []struct {
		name       string
		givePath   string
		giveSource string
		want       string
		wantIs     error
	}{
		{"flag, no such file", "/nope.yaml", "--platforms-file", "--platforms-file /nope.yaml: no such file", fs.ErrNotExist},
		{"env, no such file", "/nope.yaml", "WXDOMAIN_PLATFORMS_FILE", "WXDOMAIN_PLATFORMS_FILE /nope.yaml: no such file", fs.ErrNotExist},
		{"no source is the variable", "/nope.yaml", "", "WXDOMAIN_PLATFORMS_FILE /nope.yaml: no such file", fs.ErrNotExist},
		{"a directory", dir, "--platforms-file", "--platforms-file " + dir + ": is a directory, not a file", nil},
		{"flag, bad field", bad, "--platforms-file", "--platforms-file " + bad + `: line 2: platforms[0]: unknown field "rate_limit"; the fields are appid, secret, secret_env, rate, burst, token, encoding_aes_key`, nil},
		{"empty path", "", "--platforms-file", "WXDOMAIN_PLATFORMS_FILE is not set: it lists the platforms (appid, secret_env, rate) wxdomain may change; " +
			"set it, or pass --platforms-file; an example is cmd/wxdomain/platforms.example.yaml", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, err := config.LoadPlatformsFrom(tt.givePath, tt.giveSource)
			require.Error(t, err)
			assert.Equal(t, tt.want, strings.SplitN(err.Error(), "\n", 2)[0])
			assert.NotContains(t, err.Error(), "open ")
			if tt.wantIs != nil {
				assert.ErrorIs(t, err, tt.wantIs)
			}
		})
	}

	p, err := config.LoadPlatformsFrom(good, "--platforms-file")
	require.NoError(t, err)
	assert.True(t, p.Has("wx1234567890abcdef"))

	_, err = config.LoadPlatforms("")
	require.Error(t, err)
	assert.Equal(t, "WXDOMAIN_PLATFORMS_FILE is not set: it lists the platforms (appid, secret_env, rate) wxdomain may change; "+
		"set it, or pass --platforms-file; an example is cmd/wxdomain/platforms.example.yaml", err.Error())
}

func TestLoadPlatformsPermissionDenied(t *testing.T) {
	t.Parallel()
	if os.Geteuid() == 0 {
		t.Skip("root reads any file")
	}
	path := writeFile(t, "platforms: []\n")
	require.NoError(t, os.Chmod(path, 0))
	_, err := config.LoadPlatformsFrom(path, "--platforms-file")
	require.Error(t, err)
	assert.Equal(t, "--platforms-file "+path+": permission denied", err.Error())
	assert.ErrorIs(t, err, fs.ErrPermission)
}

func TestSecretNeverPrints(t *testing.T) {
	t.Parallel()
	s := config.Secret("hunter2")
	p := config.Platform{AppID: "wx1", Secret: s}
	for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s", p, p, p, s)} {
		assert.NotContains(t, out, "hunter2")
	}
	b, err := json.Marshal(p)
	require.NoError(t, err)
	assert.NotContains(t, string(b), "hunter2")

	core, logs := observer.New(zapcore.DebugLevel)
	zap.New(core).Info("x", zap.Any("platform", p), zap.Stringer("secret", s))
	assert.NotContains(t, fmt.Sprint(logs.All()[0].ContextMap()), "hunter2")
}
