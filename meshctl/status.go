package meshctl

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshvm/mesh/meshapi"
)

// NewStatusCommand returns `mesh status`.
func NewStatusCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show services and whether every proxy is in sync with the control plane",
		Long: "Ask mesh control (its admin listener) for every service (instances, healthy,\n" +
			"draining, localities) and every connected proxy (agent, gateway, Envoy, gRPC\n" +
			"proxyless): what it has ACKed per resource type and whether it is in sync,\n" +
			"stale (a version sent or due, not ACKed yet) or has NACKed (with the reason).\n\n" +
			fmt.Sprintf("Exit status: 0 when every proxy is in sync, %d when one is not (or the\n", ExitOutOfSync) +
			"control plane serves no model yet), 1 when mesh control cannot be asked.\n" +
			"Scripts can wait on it: until mesh status >/dev/null; do sleep 1; done",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, out, err := flags(cmd)
			if err != nil {
				return err
			}
			var st meshapi.Status
			if err := c.get(cmd.Context(), meshapi.StatusPath, &st); err != nil {
				return err
			}
			if out == "json" {
				err = writeJSON(cmd.OutOrStdout(), st)
			} else {
				err = WriteStatus(cmd.OutOrStdout(), st, time.Now())
			}
			if err != nil {
				return err
			}
			if !st.InSync {
				return exitStatus(ExitOutOfSync)
			}
			return nil
		},
	}
	commonFlags(cmd)
	return cmd
}

// WriteStatus writes st as two tables, services and proxies.
func WriteStatus(w io.Writer, st meshapi.Status, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tINSTANCES\tHEALTHY\tDRAINING\tPROTOCOL\tLOCALITY")
	for _, s := range st.Services {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\n", s.Name, s.Instances, s.Healthy, s.Draining, dash(s.Protocol), dash(strings.Join(s.Localities, ",")))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "PROXY\tKIND\tSERVICE\tCDS\tEDS\tLDS\tRDS\tSTATE\tCERT EXPIRY\tREASON")
	for _, p := range st.Proxies {
		byType := map[string]meshapi.TypeState{}
		for _, t := range p.Types {
			byType[t.Type] = t
		}
		col := func(name string) string {
			t, ok := byType[name]
			switch {
			case !ok:
				return "-"
			case t.State == meshapi.NACKed:
				return "NACK " + short(t.Acked)
			case t.State == meshapi.Stale:
				return short(t.Acked) + "*"
			}
			return short(t.Acked)
		}
		expiry := "-"
		if p.CertExpiry != nil {
			expiry = p.CertExpiry.UTC().Format(time.RFC3339) + " (" + p.CertExpiry.Sub(now).Round(time.Minute).String() + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Node, p.Kind, dash(p.Service),
			col("cluster"), col("endpoint"), col("listener"), col("route"), strings.ToUpper(p.State), expiry, dash(p.Reason))
	}
	fmt.Fprintln(tw)
	switch {
	case !st.Ready:
		fmt.Fprintln(tw, "OUT OF SYNC: the control plane serves no model yet")
	case st.InSync:
		fmt.Fprintf(tw, "IN SYNC: %d proxies, %d services\n", len(st.Proxies), len(st.Services))
	default:
		n := 0
		for _, p := range st.Proxies {
			if p.State != meshapi.InSync {
				n++
			}
		}
		fmt.Fprintf(tw, "OUT OF SYNC: %d of %d proxies (* = a version sent or due, not ACKed yet)\n", n, len(st.Proxies))
	}
	return tw.Flush()
}
