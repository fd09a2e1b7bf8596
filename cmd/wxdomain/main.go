// Command wxdomain changes the Mini Program jump domains of WeChat Open
// Platform third-party platforms through a fleet of asynq workers.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	var st *exitStatus
	switch {
	case errors.As(err, &st):
		os.Exit(st.code) // the command said all there was to say
	case err != nil:
		fmt.Fprintln(os.Stderr, "wxdomain:", err)
		os.Exit(1)
	}
}

// exitStatus ends the program with a status other than 1, after the
// command printed its own report (doctor's 2: warnings).
type exitStatus struct{ code int }

func (e *exitStatus) Error() string { return fmt.Sprintf("exit status %d", e.code) }

// run is the whole program; tests call it as the binary would be called.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	root := newRootCommand(getenv, stdout, stderr)
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}
