// Command wxbench runs wxdomain's benchmarks against a real Redis and the
// sandbox upstream, comparing with raw asynq in the same run; `make bench`
// runs it. It writes bench-results.json (BENCH_OUT) and a Markdown table;
// WXBENCH_ONLY="redis commands" runs only the measurements so named.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
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
