// Command wxbench runs wxdomain's benchmarks against a real Redis and the
// sandbox upstream, comparing with raw asynq in the same run; `make bench`
// runs it. It writes bench-results.json (BENCH_OUT) and a Markdown table;
// WXBENCH_ONLY="redis commands" runs only the measurements so named;
// WXBENCH_CPUPROFILE=file writes a CPU profile of the run.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"time"

	"github.com/wxdomain/wxdomain/internal/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	url := os.Getenv("WXDOMAIN_BENCH_REDIS_URL")
	if url == "" {
		url = "redis://127.0.0.1:6379/14"
	}
	out := os.Getenv("BENCH_OUT")
	if out == "" {
		out = "bench-results.json"
	}
	if path := os.Getenv("WXBENCH_CPUPROFILE"); path != "" {
		// Where the time goes, for `go tool pprof` (the bench process runs
		// both ours and raw asynq, against the same Redis).
		f, err := os.Create(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "wxbench:", err)
			os.Exit(1)
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, "wxbench:", err)
			os.Exit(1)
		}
		defer pprof.StopCPUProfile()
	}
	start := time.Now()
	r, err := bench.Run(ctx, url, os.Getenv("WXBENCH_ONLY"), os.Stderr)
	if err != nil {
		fmt.Fprintln(os.Stderr, "wxbench:", err)
		os.Exit(1)
	}
	b, _ := json.MarshalIndent(r, "", "  ")
	if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "wxbench:", err)
		os.Exit(1)
	}
	fmt.Print(r.Markdown())
	fmt.Printf("\n%s written in %s\n", out, time.Since(start).Round(time.Second))
}
