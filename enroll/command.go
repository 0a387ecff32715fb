package enroll

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"github.com/spf13/cobra"
)

// NewCommand is `mesh identity`: a mesh identity for a workload that runs
// no agent (a gRPC proxyless client, a batch job), as files.
func NewCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "identity", Short: "Get a mesh identity (certificate, key, trust bundle) from mesh control as files"}
	cmd.AddCommand(newIssueCommand())
	return cmd
}

func newIssueCommand() *cobra.Command {
	var o Options
	var watch bool
	cmd := &cobra.Command{
		Use:   "issue",
		Short: "Make a key here, have mesh control sign it for --service, write cert.pem, key.pem (0600) and bundle.pem to --out-dir",
		Long: `Makes a key on this machine, sends a CSR with the join token to mesh control's signing RPC and
writes cert.pem (the chain), key.pem (0600) and bundle.pem (the trust bundle) into --out-dir:
the files a gRPC proxyless client's file_watcher certificate providers read. With --watch it
keeps renewing at half-life, presenting the current certificate (the token may then expire),
until interrupted.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch {
			case o.TokenFile == "":
				return errors.New("--join-token-file is required")
			case len(o.Servers) == 0:
				return errors.New("--control-plane is required")
			case o.Service == "":
				return errors.New("--service is required")
			case o.Dir == "":
				return errors.New("--out-dir is required")
			}
			o.Field, o.CAField = "--join-token-file", "--control-plane-ca-file"
			o.Log = zerolog.New(zerolog.ConsoleWriter{Out: cmd.ErrOrStderr(), NoColor: true}).With().Timestamp().Logger()
			if o.NodeName == "" {
				o.NodeName, _ = os.Hostname()
			}
			if o.NodeID == "" {
				o.NodeID = o.Service + "-" + o.NodeName
			}
			e, err := New(o)
			if err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if watch {
				return e.Run(ctx)
			}
			ctx, cancel := context.WithTimeout(ctx, time.Minute)
			defer cancel()
			if err := e.rot.Rotate(ctx); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "issued %s, expires %s: %s, %s, %s\n", e.ID(), e.creds.Expiry().UTC().Format(time.RFC3339),
				filepath.Join(o.Dir, "cert.pem"), filepath.Join(o.Dir, "key.pem"), filepath.Join(o.Dir, "bundle.pem"))
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.TokenFile, "join-token-file", "", "the join token (mesh control token create --service ...)")
	f.StringSliceVar(&o.Servers, "control-plane", nil, "mesh control's xDS address(es), host:port")
	f.StringVar(&o.Service, "service", "", "the service to be (the token must allow it)")
	f.StringVar(&o.Dir, "out-dir", "", "where cert.pem, key.pem and bundle.pem are written")
	f.StringVar(&o.CAFile, "control-plane-ca-file", "", "PEM roots to verify mesh control with (default: the token's CA hashes)")
	f.StringVar(&o.NodeName, "node", "", "node name (default the host name; checked against a token bound to a node)")
	f.BoolVar(&watch, "watch", false, "keep renewing the files until interrupted")
	return cmd
}
