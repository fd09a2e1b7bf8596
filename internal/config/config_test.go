package config_test

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
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

func TestPlatformsFileErrors(t *testing.T) {
	t.Parallel()
	const appid = "wx1234567890abcdef"
	tests := []struct {
		name string
		give string
		want string
	}{
		{"unknown field", "platforms:\n  - appid: " + appid + "\n    secret: s\n    sekret: x\n", "field sekret not found"},
		{"no platforms", "platforms: []\n", "no platforms listed"},
		{"duplicate", "platforms:\n  - {appid: " + appid + ", secret: s}\n  - {appid: " + appid + ", secret: s}\n", "listed twice"},
		{"no secret", "platforms:\n  - {appid: " + appid + "}\n", "secret_env (or secret) is required"},
		{"both secrets", "platforms:\n  - {appid: " + appid + ", secret: s, secret_env: S}\n", "not both"},
		{"bad appid", "platforms:\n  - {appid: 'wx 1', secret: s}\n", "platforms[0].appid"},
		{"internal key name as appid", "platforms:\n  - {appid: _global, secret: s}\n", `platforms[0].appid "_global": not a component appid`},
		{"short appid", "platforms:\n  - {appid: wx1, secret: s}\n", `platforms[0].appid "wx1": not a component appid`},
		{"upper-case appid", "platforms:\n  - {appid: WX1234567890ABCDEF, secret: s}\n", "16 lower-case hex digits"},
		{"appid with a key separator", "platforms:\n  - {appid: 'wx1234567890abcde:', secret: s}\n", "not a component appid"},
		{"negative rate", "platforms:\n  - {appid: " + appid + ", secret: s, rate: -1}\n", "must not be negative"},
		{"not yaml", "platforms: [", "yaml"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := config.LoadPlatforms(writeFile(t, tt.give))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.want)
			assert.Contains(t, err.Error(), "WXDOMAIN_PLATFORMS_FILE")
		})
	}
	_, err := config.LoadPlatforms("")
	assert.ErrorContains(t, err, "WXDOMAIN_PLATFORMS_FILE is not set")
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
