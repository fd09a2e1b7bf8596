package main

import (
	"encoding/json"
	"os/exec"
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
	assert.Equal(t, 1, exit.ExitCode())
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
}
