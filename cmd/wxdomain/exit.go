package main

import (
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/spf13/cobra"

	"github.com/wxdomain/wxdomain/tasks"
)

// Exit statuses, the same for every command (README: "Exit status").
const (
	// exitOK: everything asked for was done (for a waiting command:
	// every change succeeded).
	exitOK = 0
	// exitError: the command could not run (Redis unreachable, bad
	// settings, a refusal), or could not do what was asked.
	exitError = 1
	// exitUsage: the command line is wrong (unknown flag or argument, a
	// bad value, an invalid change); nothing was done.
	exitUsage = 2
	// exitNotAllSucceeded: it ran to the end, but not everything
	// succeeded (a change failed, partial or canceled; a rollout with
	// such platforms; a domain that fails its check; doctor's warnings).
	exitNotAllSucceeded = 3
	// exitTimedOut: the wait ended before the work did; what there was
	// to print was printed.
	exitTimedOut = 4
	// exitInterrupted: Ctrl-C or SIGTERM ended a command (128 + SIGINT).
	exitInterrupted = 130
)

// exitStatus ends the program with a status other than 1, after the
// command printed its own report.
type exitStatus struct{ code int }

func (e *exitStatus) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// usageError is a mistake in the command line: exit status 2.
type usageError struct{ err error }

func (e *usageError) Error() string { return e.err.Error() }
func (e *usageError) Unwrap() error { return e.err }

func usage(format string, a ...any) error { return &usageError{fmt.Errorf(format, a...)} }

// exitCode is the status an error ends the program with.
func exitCode(err error) int {
	var (
		st *exitStatus
		ue *usageError
		ve *tasks.ValidationError
	)
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &st):
		return st.code
	case errors.As(err, &ue), errors.As(err, &ve):
		return exitUsage
	}
	// cobra's own words for a wrong command line.
	msg := err.Error()
	for _, p := range []string{"unknown command ", "required flag(s) ", "unknown flag: ", "unknown shorthand flag: ", "flag needs an argument: ", "if any flags in the group ", "accepts ", "requires at least ", "requires at most "} {
		if strings.HasPrefix(msg, p) {
			return exitUsage
		}
	}
	return exitError
}

// statusCode is the exit status of a change that is final.
func statusCode(s tasks.Status) error {
	if s == tasks.StatusSucceeded {
		return nil
	}
	return &exitStatus{code: exitNotAllSucceeded}
}

// flagValue matches pflag's error for a value it could not parse.
var flagValue = regexp.MustCompile(`^invalid argument "(.*)" for "(.*)" flag: (.*)$`)

// flagError says which flag got a value it cannot take, and what it wants,
// in the user's words rather than strconv's.
func flagError(_ *cobra.Command, err error) error {
	m := flagValue.FindStringSubmatch(err.Error())
	if m == nil {
		return &usageError{err}
	}
	value, flag, why := m[1], m[2], m[3]
	if i := strings.Index(flag, "--"); i >= 0 {
		flag = flag[i:] // "-c, --concurrency" → "--concurrency"
	}
	want := why
	switch {
	case strings.Contains(why, "ParseInt"), strings.Contains(why, "ParseUint"):
		want = "want a whole number"
	case strings.Contains(why, "ParseFloat"):
		want = "want a number"
	case strings.Contains(why, "ParseBool"):
		want = "want true or false"
	case strings.Contains(why, "time: "):
		want = "want a duration such as 30s, 2m or 1h"
	}
	return usage("%s %q: %s", flag, value, want)
}

// noArgs refuses arguments, naming the first one (a command takes its
// input as flags).
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usage("unexpected argument %q: %q takes no arguments (its input goes in flags; see --help)", args[0], cmd.CommandPath())
	}
	return nil
}

// usageArgs makes every command's argument check a usage error, and its
// "takes no arguments" name the stray one.
func usageArgs(cmd *cobra.Command) {
	for _, c := range cmd.Commands() {
		usageArgs(c)
	}
	check := cmd.Args
	if check == nil {
		if cmd.HasSubCommands() {
			return // cobra's "unknown command" is a usage error already
		}
		check = cobra.ArbitraryArgs
	}
	cmd.Args = func(c *cobra.Command, args []string) error {
		if len(args) > 0 && isNoArgs(check) {
			return noArgs(c, args)
		}
		if err := check(c, args); err != nil {
			return &usageError{err}
		}
		return nil
	}
}

// isNoArgs reports whether check refuses any argument.
func isNoArgs(check cobra.PositionalArgs) bool {
	return check(&cobra.Command{}, []string{"x"}) != nil && check(&cobra.Command{}, nil) == nil
}
