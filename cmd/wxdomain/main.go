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
	case err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled):
		// Ctrl-C or SIGTERM: only this command stops; the work goes on.
		fmt.Fprintln(os.Stderr, "wxdomain: interrupted; what was submitted goes on")
		os.Exit(exitInterrupted)
	case err != nil && !errors.As(err, &st):
		fmt.Fprintln(os.Stderr, "wxdomain:", err) // else the command said all there was to say
	}
	os.Exit(exitCode(err))
}

// run is the whole program; tests call it as the binary would be called.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	root := newRootCommand(getenv, stdout, stderr)
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}
