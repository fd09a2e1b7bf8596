package main

import (
	"context"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/wxdomain/wxdomain/internal/preflight"
	"github.com/wxdomain/wxdomain/tasks"
)

// withPlatformPreflight checks the appid, then connects the preflight.
func (a *app) withPlatformPreflight(ctx context.Context, appid string, run func(*preflightConn) error) error {
	c, err := a.preflight(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if pr, ok := tasks.CheckPlatform(appid, tasks.Rules{KnownPlatform: c.platforms.Has}); !ok {
		return fmt.Errorf("--platform %q %s", tasks.Truncate(appid), pr.Reason)
	}
	return run(c)
}

func (a *app) confirmFileCommand() *cobra.Command {
	var (
		appid  string
		asJSON bool
	)
	cmd := &cobra.Command{
		Use:   "confirmfile --platform APPID [--json]",
		Short: "Show the verification file each domain of a platform must serve before it can be added",
		Long: `Shows the platform's domain verification file (get_domain_confirmfile): every
domain to add must answer https://DOMAIN/FILE_NAME with 200 and exactly the
content. It is asked of WeChat through the fleet's shared token and rate
limit, and kept in Redis for a day.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.withPlatformPreflight(cmd.Context(), appid, func(c *preflightConn) error {
				f, err := c.preflight.File(cmd.Context(), appid)
				if err != nil {
					return fmt.Errorf("verification file of %s: %w", appid, err)
				}
				if asJSON {
					return a.printJSON(map[string]any{"platform": appid, "file_name": f.Name, "file_content": f.Content, "path": "/" + f.Name, "fetched_at": f.FetchedAt})
				}
				fmt.Fprintf(a.stdout, "platform:  %s\nfile name: %s\ncontent:   %s\n\nServe it at https://DOMAIN/%s on every domain to add: HTTP 200, the content as the whole body, no redirect.\nCheck with: wxdomain domains check --platform %s --domains DOMAIN\n", appid, f.Name, f.Content, f.Name, appid)
				return nil
			})
		},
	}
	cmd.Flags().StringVar(&appid, "platform", "", "the platform's component appid (required)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	_ = cmd.MarkFlagRequired("platform")
	return cmd
}

func (a *app) domainsCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "domains", Short: "Check domains before changing anything"}
	var (
		appid, domains string
		asJSON         bool
	)
	check := &cobra.Command{
		Use:   "check --platform APPID --domains a.com,b.com [--json]",
		Short: "Check that each domain serves the platform's verification file; changes nothing",
		Long: `Fetches https://DOMAIN/FILE_NAME for each domain, as WeChat will when the
domain is added, and says per domain: ok, or what is wrong (DNS, TLS and the
certificate's problem, HTTP status, redirect and its target, wrong content,
timeout, or an address that is not public). The results are fresh, and are
kept for 5 minutes for the workers' preflight. Exits 3 when a domain fails.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			change := tasks.JumpDomainChange{Platform: appid, Action: tasks.ActionAdd, Domains: splitList(domains)}
			if err := describe(change.Validate()); err != nil {
				return err
			}
			return a.withPlatformPreflight(cmd.Context(), appid, func(c *preflightConn) error {
				rep, err := c.preflight.Run(cmd.Context(), appid, change.Domains, true)
				if err != nil {
					return fmt.Errorf("preflight of %s: %w", appid, err)
				}
				if asJSON {
					if err := a.printJSON(rep); err != nil {
						return err
					}
				} else {
					printReport(a, rep)
				}
				if n := len(rep.Failed()); n > 0 {
					return &exitStatus{code: exitNotAllSucceeded}
				}
				return nil
			})
		},
	}
	check.Flags().StringVar(&appid, "platform", "", "the platform's component appid (required)")
	check.Flags().StringVar(&domains, "domains", "", "comma-separated host names (required)")
	check.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	_ = check.MarkFlagRequired("platform")
	_ = check.MarkFlagRequired("domains")
	cmd.AddCommand(check)
	return cmd
}

func printReport(a *app, rep preflight.Report) {
	fmt.Fprintf(a.stdout, "platform %s, verification file %s\n", rep.Platform, rep.File.Name)
	tw := tabwriter.NewWriter(a.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DOMAIN\tRESULT\tDETAIL")
	for _, f := range rep.Findings {
		fmt.Fprintf(tw, "%s\t%s\t%s\n", f.Domain, f.Result, f.Detail)
	}
	_ = tw.Flush()
	if n := len(rep.Failed()); n > 0 {
		fmt.Fprintf(a.stdout, "%d of %d domains do not serve the file: `wxdomain confirmfile --platform %s` shows what to serve\n", n, len(rep.Findings), rep.Platform)
	}
}
