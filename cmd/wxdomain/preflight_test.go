package main

import (
	"encoding/json"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/redistest"
)

// The preflight commands as an operator runs them: the file to serve, a
// check of domains (which, without a network, fail their DNS lookup), and
// a dry run's summary.
func TestPreflightCommands(t *testing.T) {
	t.Parallel()
	rb := redistest.Real(t)
	c := newCLI(t, rb, "platforms:\n  - appid: "+appID+"\n    secret_env: WX_SECRET\n", "WX_SECRET="+appSecret)
	c.env = slices.DeleteFunc(c.env, func(kv string) bool { return strings.HasPrefix(kv, "WXDOMAIN_PREFLIGHT=") }) // the default, warn
	c.startFake()
	_, errOut, err := c.run("ticket", "set", appID, theTicket)
	require.NoError(t, err, errOut)

	out, errOut, err := c.run("confirmfile", "--platform", appID)
	require.NoError(t, err, errOut)
	assert.Contains(t, out, "content:   sandbox-"+appID)
	assert.Contains(t, out, "Serve it at https://DOMAIN/")
	out, errOut, err = c.run("confirmfile", "--platform", appID, "--json")
	require.NoError(t, err, errOut)
	var f map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &f), out)
	assert.Equal(t, "sandbox-"+appID, f["file_content"])

	_, errOut, err = c.run("confirmfile", "--platform", "wx0000000000000000")
	require.Error(t, err)
	assert.Contains(t, errOut, "is not in the platforms file")

	out, errOut, err = c.run("domains", "check", "--platform", appID, "--domains", "nothing.invalid")
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, errOut)
	assert.Equal(t, exitNotAllSucceeded, exit.ExitCode())
	assert.Contains(t, out, "nothing.invalid")
	assert.Regexp(t, `nothing\.invalid\s+dns\s+DNS lookup of nothing\.invalid failed`, out)
	assert.Contains(t, out, "1 of 1 domains do not serve the file")

	_, errOut, err = c.run("domains", "check", "--platform", appID, "--domains", "https://x.com")
	require.Error(t, err)
	assert.Contains(t, errOut, "has a scheme")

	_, errOut, err = c.run("enqueue", "--platform", appID, "--action", "add", "--domains", "a.example.com", "--preflight", "strict")
	require.Error(t, err)
	assert.Contains(t, errOut, `preflight "strict": must be one of enforce, warn, off`)

	out, errOut, err = c.run("rollout", "create", "--action", "add", "--domains", "nothing.invalid", "--all", "--dry-run", "--preflight", "enforce")
	require.NoError(t, err, errOut)
	assert.Contains(t, out, "preflight (enforce): 1 of 1 platforms have a domain without its verification file")
	assert.Contains(t, out, "1 of 1 platforms: file missing on nothing.invalid")

	// In warn mode (the default) the change is made, and the rollout's
	// failures list the platform with the reason.
	w := c.start("worker")
	waitFor(t, w, regexp.MustCompile(`worker started`))
	out, errOut, err = c.run("rollout", "create", "--action", "add", "--domains", "nothing.invalid", "--all", "--wait", "--json")
	require.NoError(t, err, errOut)
	id := regexp.MustCompile(`"rollout_id":\s*"([0-9a-f]+)"`).FindStringSubmatch(out)
	require.NotNil(t, id, out)
	out, errOut, err = c.run("rollout", "status", id[1])
	require.NoError(t, err, errOut)
	assert.Contains(t, out, "succeeded 1")
	assert.Contains(t, out, "preflight: 1 platforms have a domain without its verification file")
	out, errOut, err = c.run("rollout", "failures", id[1], "--csv")
	require.NoError(t, err, errOut)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 2, out)
	assert.Equal(t, "platform,errcode,errmsg,reason,task_id,status,preflight", lines[0])
	assert.Regexp(t, `^`+appID+`,0,ok,,r_[0-9a-f]+_0_`+appID+`,succeeded,nothing\.invalid: verification file missing: DNS lookup of nothing\.invalid failed`, lines[1])
	w.stop(t)
}
