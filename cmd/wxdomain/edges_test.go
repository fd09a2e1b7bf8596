package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/platform"
	"github.com/wxdomain/wxdomain/internal/redistest"
	"github.com/wxdomain/wxdomain/internal/wxcrypt"
	"github.com/wxdomain/wxdomain/tasks"
)

const (
	pushToken  = "push-msg-token"
	pushAESKey = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
	testAPIKey = "test-api-token-0123456789"
)

// pushTicket sends WeChat's encrypted component_verify_ticket push, sent
// now and created at createdAt, and returns the answer.
func pushTicket(t *testing.T, api, appid, ticket string, createdAt time.Time) (int, string) {
	t.Helper()
	c, err := wxcrypt.New(pushToken, pushAESKey, appid)
	require.NoError(t, err)
	inner := fmt.Sprintf(`<xml><AppId><![CDATA[%s]]></AppId><CreateTime>%d</CreateTime><InfoType><![CDATA[component_verify_ticket]]></InfoType><ComponentVerifyTicket><![CDATA[%s]]></ComponentVerifyTicket></xml>`,
		appid, createdAt.Unix(), ticket)
	enc, err := c.Encrypt([]byte("0123456789abcdef"), []byte(inner))
	require.NoError(t, err)
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	u := api + "/wechat/events/" + appid + "?timestamp=" + ts + "&nonce=42&encrypt_type=aes&msg_signature=" + c.Signature(ts, "42", enc)
	resp, err := http.Post(u, "text/xml", strings.NewReader(`<xml><AppId><![CDATA[`+appid+`]]></AppId><Encrypt><![CDATA[`+enc+`]]></Encrypt></xml>`))
	require.NoError(t, err)
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func setFaults(t *testing.T, upstream, appid, faults string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, upstream+"/sandbox/platforms/"+appid+"/faults", strings.NewReader(faults))
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	_ = resp.Body.Close()
	require.Equal(t, http.StatusNoContent, resp.StatusCode)
}

func (c *cli) pauseOf(appid string) *tasks.Pause {
	c.t.Helper()
	out, errOut, err := c.run("platforms", "--json")
	require.NoError(c.t, err, errOut)
	var report platform.List
	require.NoError(c.t, json.Unmarshal([]byte(out), &report))
	for _, s := range report.Platforms {
		if s.AppID == appid {
			return s.Pause
		}
	}
	c.t.Fatalf("platform %s not reported", appid)
	return nil
}

// TestQuotaPauseSurvivesTicketPushes: WeChat pushes a ticket every 10
// minutes; none of them ends a daily-quota pause, which holds until 00:00
// China time unless the operator resumes the platform.
func TestQuotaPauseSurvivesTicketPushes(t *testing.T) {
	t.Parallel()
	const app = "wx00000000000000f1"
	rb := redistest.Real(t)
	c := newCLI(t, rb, fmt.Sprintf("platforms:\n  - {appid: %s, secret_env: S, token: %s, encoding_aes_key: %s}\n", app, pushToken, pushAESKey),
		"S=s", "WXDOMAIN_API_TOKENS="+testAPIKey, "WXDOMAIN_RETRY_BASE=100ms")
	fake, upstream := c.startFake()
	setFaults(t, upstream, app, `{"script":[45009]}`)
	_, errOut, err := c.run("ticket", "set", app, "ticket-0")
	require.NoError(t, err, errOut)
	srv := c.start("serve", "--addr", "127.0.0.1:0", "--with-worker")
	api := waitFor(t, srv, regexp.MustCompile(`API listening on (http://127\.0\.0\.1:\d+)`))[1]

	var ids []string
	for i := 0; i < 3; i++ {
		out, errOut, err := c.run("enqueue", "--platform", app, "--action", "add", "--domains", fmt.Sprintf("d%d.example.com", i))
		require.NoError(t, err, errOut)
		ids = append(ids, decodeRecord(t, out).TaskID)
	}
	china := time.FixedZone("UTC+8", 8*3600)
	n := time.Now().In(china)
	midnight := time.Date(n.Year(), n.Month(), n.Day()+1, 0, 0, 0, 0, china)
	waiting := func() {
		t.Helper()
		for _, id := range ids {
			out, errOut, err := c.run("status", id)
			require.NoError(t, err, errOut)
			rec := decodeRecord(t, out)
			assert.Equal(t, tasks.StatusRetrying, rec.Status, id)
			assert.Zero(t, rec.Attempts, "waiting for the quota uses no attempt")
			require.NotNil(t, rec.NextAttemptAt, id)
			assert.WithinDuration(t, midnight, *rec.NextAttemptAt, time.Second, "it runs again at 00:00 China time")
		}
	}
	require.Eventually(t, func() bool {
		p := c.pauseOf(app)
		if p == nil {
			return false
		}
		for _, id := range ids {
			out, _, err := c.run("status", id)
			if err != nil || decodeRecord(t, out).NextAttemptAt == nil {
				return false
			}
		}
		return true
	}, 30*time.Second, 200*time.Millisecond)
	p := c.pauseOf(app)
	assert.Equal(t, "daily_quota", string(p.Kind))
	assert.False(t, p.EndsWithTicket)
	assert.WithinDuration(t, midnight, p.Until, time.Second)
	waiting()

	for i := 1; i <= 3; i++ {
		status, answer := pushTicket(t, api, app, fmt.Sprintf("ticket-%d", i), time.Now().Add(time.Duration(i)*time.Second))
		require.Equal(t, http.StatusOK, status, answer)
		assert.Equal(t, "success", answer)
		stored, err := rb.Client.HGet(context.Background(), rb.Prefix+"ticket:"+app, "ticket").Result()
		require.NoError(t, err)
		assert.Equal(t, fmt.Sprintf("ticket-%d", i), stored, "the push was stored")
		require.NotNil(t, c.pauseOf(app), "push %d did not end the quota pause", i)
	}
	waiting()
	out, _, err := c.run("platforms")
	require.NoError(t, err)
	assert.Contains(t, out, "paused (daily_quota) until "+midnight.Local().Format(time.DateTime)+" or on resume")

	out, errOut, err = c.run("platforms", "resume", app)
	require.NoError(t, err, errOut)
	assert.Contains(t, out, "ended the pause of "+app+" (daily_quota")
	assert.Contains(t, out, "3 waiting changes run now")
	assert.Contains(t, errOut, "platform resumed by an operator")
	assert.Contains(t, errOut, `"requested_by":"cli user `)
	for _, id := range ids {
		out, errOut, err := c.run("status", id, "--wait", "--timeout", "30s")
		require.NoError(t, err, errOut)
		assert.Equal(t, tasks.StatusSucceeded, decodeRecord(t, out).Status)
	}
	assert.Nil(t, c.pauseOf(app))
	srv.stop(t)
	fake.stop(t)
	assert.Equal(t, 1, strings.Count(srv.output(), "platform paused; its changes wait"), "one line per pause, not per push or change")
}

// TestOperatorPauseEndsAtItsTime: an IP-whitelist pause is not cured by a
// ticket; it ends at its time on its own.
func TestOperatorPauseEndsAtItsTime(t *testing.T) {
	t.Parallel()
	const app = "wx00000000000000f2"
	rb := redistest.Real(t)
	c := newCLI(t, rb, "platforms:\n  - {appid: "+app+", secret_env: S}\n", "S=s", "WXDOMAIN_OPERATOR_PAUSE=8s", "WXDOMAIN_RETRY_BASE=100ms")
	fake, upstream := c.startFake()
	setFaults(t, upstream, app, `{"token_errcode":61004}`)
	_, errOut, err := c.run("ticket", "set", app, "ticket-0")
	require.NoError(t, err, errOut)
	w := c.start("worker")
	waitFor(t, w, regexp.MustCompile(`worker started`))
	out, errOut, err := c.run("enqueue", "--platform", app, "--action", "get")
	require.NoError(t, err, errOut)
	id := decodeRecord(t, out).TaskID
	var p *tasks.Pause
	require.Eventually(t, func() bool { p = c.pauseOf(app); return p != nil }, 20*time.Second, 100*time.Millisecond)
	assert.Equal(t, "ip_not_whitelisted", string(p.Kind))
	setFaults(t, upstream, app, `{}`) // the operator whitelists the IP

	out, errOut, err = c.run("ticket", "set", app, "ticket-1")
	require.NoError(t, err, errOut)
	assert.Contains(t, out, "stays paused (ip_not_whitelisted)")
	require.NotNil(t, c.pauseOf(app), "a ticket does not end it")

	out, errOut, err = c.run("status", id, "--wait", "--timeout", "30s")
	require.NoError(t, err, errOut)
	rec := decodeRecord(t, out)
	assert.Equal(t, tasks.StatusSucceeded, rec.Status, "%+v\nworker:\n%s", rec, w.output())
	require.NotNil(t, rec.FinishedAt)
	assert.False(t, rec.FinishedAt.Before(p.Until), "it ran when the pause ended, not before")
	w.stop(t)
	fake.stop(t)
}

// TestHTTPServerCutsSlowRequests: a body sent a byte a second is cut off
// (on the API and on the open push endpoint), and oversized headers are
// refused.
func TestHTTPServerCutsSlowRequests(t *testing.T) {
	t.Parallel()
	const app = "wx00000000000000f3"
	rb := redistest.Real(t)
	c := newCLI(t, rb, fmt.Sprintf("platforms:\n  - {appid: %s, secret_env: S, token: %s, encoding_aes_key: %s}\n", app, pushToken, pushAESKey),
		"S=s", "WXDOMAIN_API_TOKENS="+testAPIKey, "WXDOMAIN_HTTP_READ_TIMEOUT=2s")
	srv := c.start("serve", "--addr", "127.0.0.1:0")
	api := waitFor(t, srv, regexp.MustCompile(`API listening on (http://127\.0\.0\.1:\d+)`))[1]
	addr := strings.TrimPrefix(api, "http://")
	for _, path := range []string{"/v1/changes", "/wechat/events/" + app + "?timestamp=1&nonce=1&msg_signature=x"} {
		conn, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		_, err = fmt.Fprintf(conn, "POST %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\nContent-Length: 100\r\n\r\n", path, testAPIKey)
		require.NoError(t, err)
		start := time.Now()
		cut := make(chan time.Duration, 1)
		go func() {
			_, _ = io.Copy(io.Discard, conn) // returns when the server closes
			cut <- time.Since(start)
		}()
		sent := 0
	send:
		for sent < 100 {
			select {
			case <-cut:
				break send
			case <-time.After(time.Second):
				if _, err := conn.Write([]byte("x")); err != nil {
					break send
				}
				sent++
			}
		}
		_ = conn.Close()
		assert.Less(t, sent, 10, "%s: the server cut the slow body off after %d bytes", path, sent)
	}

	req, err := http.NewRequest(http.MethodGet, api+"/v1/platforms", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+testAPIKey)
	req.Header.Set("X-Padding", strings.Repeat("p", 100<<10))
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	_ = resp.Body.Close()
	assert.Equal(t, http.StatusRequestHeaderFieldsTooLarge, resp.StatusCode)
	srv.stop(t)
}

// TestLongPollOf60sStillWorks: the server's timeouts leave room for the
// longest long poll.
func TestLongPollOf60sStillWorks(t *testing.T) {
	t.Parallel()
	const app = "wx00000000000000f4"
	rb := redistest.Real(t)
	c := newCLI(t, rb, "platforms:\n  - {appid: "+app+", secret_env: S}\n", "S=s", "WXDOMAIN_API_TOKENS="+testAPIKey)
	srv := c.start("serve", "--addr", "127.0.0.1:0") // no worker: the change stays queued
	api := waitFor(t, srv, regexp.MustCompile(`API listening on (http://127\.0\.0\.1:\d+)`))[1]
	call := func(method, path, body string) (int, tasks.Record) {
		req, err := http.NewRequest(method, api+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+testAPIKey)
		resp, err := (&http.Client{Timeout: 90 * time.Second}).Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		var rec tasks.Record
		require.NoError(t, json.NewDecoder(bufio.NewReader(resp.Body)).Decode(&rec))
		return resp.StatusCode, rec
	}
	status, rec := call(http.MethodPost, "/v1/changes", `{"platform":"`+app+`","action":"get"}`)
	require.Equal(t, http.StatusAccepted, status)
	start := time.Now()
	status, rec = call(http.MethodGet, "/v1/changes/"+rec.TaskID+"?wait=60s", "")
	assert.Equal(t, http.StatusOK, status)
	assert.Equal(t, tasks.StatusQueued, rec.Status)
	assert.GreaterOrEqual(t, time.Since(start), 60*time.Second)
	srv.stop(t)
}

// TestCLIChecksIDs: ids and appids given on the command line are checked
// against the form wxdomain generates before Redis is touched.
func TestCLIChecksIDs(t *testing.T) {
	t.Parallel()
	const app = "wx00000000000000f5"
	rb := redistest.Real(t)
	c := newCLI(t, rb, "platforms:\n  - {appid: "+app+", secret_env: S}\n", "S=s")
	out, errOut, err := c.run("rollout", "create", "--action", "add", "--domains", "a.com", "--platforms", app, "--json")
	require.NoError(t, err, errOut)
	var r struct {
		ID string `json:"rollout_id"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &r))
	ctx := context.Background()
	keys := func() []string {
		k, err := rb.Client.Keys(ctx, rb.Prefix+"*").Result()
		require.NoError(t, err)
		return k
	}
	state := func() map[string]string {
		return rb.Client.HGetAll(ctx, tasks.RolloutStateKey(rb.Prefix, r.ID)).Val()
	}
	before, beforeState := keys(), state()
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"rollout", "status", r.ID + ":state"}, "rollout not found"},
		{[]string{"rollout", "cancel", r.ID + ":state"}, "rollout not found"},
		{[]string{"rollout", "retry", r.ID + ":counts"}, "rollout not found"},
		{[]string{"rollout", "failures", r.ID + ":platforms:0"}, "rollout not found"},
		{[]string{"status", r.ID + ":x"}, "task not found"},
		{[]string{"cancel", "abc:def"}, "task not found"},
		{[]string{"ticket", "set", "_global", "t"}, "not a component appid"},
		{[]string{"platforms", "resume", "_global"}, "not a component appid"},
		{[]string{"platforms", "resume", "wx0000000000000000"}, "not in the platforms file"},
		{[]string{"ticket", "set", app, "t", "--time", strconv.FormatInt(time.Now().UnixMilli(), 10)}, "in the future"},
	} {
		_, errOut, err := c.run(tt.args...)
		assert.Error(t, err, "%v", tt.args)
		assert.Contains(t, errOut, tt.want, "%v", tt.args)
	}
	assert.ElementsMatch(t, before, keys(), "nothing was written")
	assert.Equal(t, beforeState, state())
}
