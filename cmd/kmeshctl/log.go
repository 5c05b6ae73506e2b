package main

import (
	"fmt"
	"net/url"
	"strconv"

	"github.com/spf13/cobra"

	"github.com/kmesh-go/kmesh/internal/admin/api"
)

var logLevels = []string{"debug", "info", "warn", "error"}

func newLogCommand(a *app) *cobra.Command {
	var level string
	cmd := &cobra.Command{
		Use:   "log",
		Short: "Show or change kmeshd's log level",
		Long: `Shows kmeshd's log level, or changes it at run time with --level. The change
lasts until kmeshd restarts, which starts again at its --log-level. A change
goes through kmeshd's admin socket (--admin-socket), so it needs root.

Levels: debug (per-item detail: each workload enrolled, each config read),
info (lifecycle), warn (degraded), error (a person must act).`,
		Example: `  # Show the level
  kmeshctl log

  # Turn on debug logs, then back to normal
  kmeshctl log --level debug
  kmeshctl log --level info`,
		Args: cobra.NoArgs,
		PreRunE: func(*cobra.Command, []string) error {
			if level != "" {
				return checkLevel(level)
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, _ []string) error {
			var l api.Logging
			var err error
			if level == "" {
				err = a.client().getJSON(cmd.Context(), "/logging", nil, &l)
			} else {
				err = a.controlClient().postJSON(cmd.Context(), "/logging", url.Values{"level": {level}}, &l)
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "log level: %s\n", l.Level)
			return nil
		},
	}
	cmd.Flags().StringVar(&level, "level", "", "new log level: debug, info, warn, error")
	cmd.RegisterFlagCompletionFunc("level", cobra.FixedCompletions(logLevels, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

func checkLevel(level string) error {
	for _, l := range logLevels {
		if l == level {
			return nil
		}
	}
	return fmt.Errorf("unknown log level %s: want debug, info, warn or error", strconv.Quote(level))
}

func newAccessLogCommand(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "accesslog [on|off]",
		Short: "Show or switch kmeshd's access log",
		Long: `Shows whether kmeshd writes an access log line for each closed connection of
its workloads, or switches it on or off at run time. The switch lasts until
kmeshd restarts; it goes through kmeshd's admin socket (--admin-socket), so it
needs root.`,
		Example: `  # Is the access log on?
  kmeshctl accesslog

  # Log every connection for a while, then stop
  kmeshctl accesslog on
  kmeshctl accesslog off`,
		Args:      cobra.MatchAll(cobra.MaximumNArgs(1), cobra.OnlyValidArgs),
		ValidArgs: []string{"on", "off"},
		RunE: func(cmd *cobra.Command, args []string) error {
			var s api.AccessLog
			var err error
			if len(args) == 0 {
				err = a.client().getJSON(cmd.Context(), "/accesslog", nil, &s)
			} else {
				err = a.controlClient().postJSON(cmd.Context(), "/accesslog", url.Values{"enabled": {strconv.FormatBool(args[0] == "on")}}, &s)
			}
			if err != nil {
				return err
			}
			state := "off"
			if s.Enabled {
				state = "on"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "access log: %s\n", state)
			return nil
		},
	}
}
