package controlplane

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane/ca"
	"github.com/meshvm/mesh/identity"
)

// caFlagKeys maps the CA tools' flags onto config keys.
var caFlagKeys = map[string]string{
	"ca-dir":       "control.ca.dir",
	"trust-domain": "control.ca.trust_domain",
}

// openCA loads the config's control.ca section (with the --ca-dir and
// --trust-domain flags) and opens the CA, creating its material the first
// time.
func openCA(cmd *cobra.Command) (*ca.CA, error) {
	file, _ := cmd.Flags().GetString("config")
	cfg, err := config.Load(config.Options{File: file, Flags: cmd.Flags(), FlagKeys: caFlagKeys, Role: config.RoleAny})
	if err != nil {
		return nil, err
	}
	c := cfg.Control.CA
	return ca.Open(ca.Config{Dir: c.Dir, TrustDomain: c.TrustDomain, Namespace: c.Namespace, CertTTL: c.CertTTL,
		CertFile: c.CertFile, KeyFile: c.KeyFile}, nil)
}

func addCAFlags(cmd *cobra.Command) {
	cmd.Flags().String("ca-dir", "", "CA directory (control.ca.dir, default /var/lib/mesh/ca)")
	cmd.Flags().String("trust-domain", "", "trust domain (control.ca.trust_domain, default "+identity.DefaultTrustDomain+")")
}

// newTokenCommand returns `mesh control token`.
func newTokenCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "Mint and revoke join tokens for agents and gateways"}
	var services []string
	var node, out string
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create --service NAME [--service NAME] [--node NODE] [--ttl 720h] [--output FILE]",
		Short: "Mint a join token",
		Long: "Mint a join token signed by the control plane's token key (control.ca.dir):\n" +
			"an agent or gateway presenting it is issued certificates for the named\n" +
			"services only (and, with --node, only on that node). The token is printed on\n" +
			"stdout, or written to --output with mode 0600; its ID and expiry go to\n" +
			"stderr. Distribute it into a 0600 file (agent.join_token_file). A token\n" +
			"expiring never stops a running agent: it renews with its certificate.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if len(services) == 0 {
				return errors.New("--service is required (repeat it for several services)")
			}
			c, err := openCA(cmd)
			if err != nil {
				return err
			}
			tok, claims, err := c.MintToken(services, node, ttl)
			if err != nil {
				return err
			}
			if out != "" {
				if err := identity.WriteFileAtomic(out, []byte(tok+"\n"), 0o600); err != nil {
					return err
				}
			} else {
				fmt.Fprintln(cmd.OutOrStdout(), tok)
			}
			bound := ""
			if node != "" {
				bound = " on node " + node
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "token %s for %s%s, expires %s\n", claims.ID, strings.Join(claims.Services, ", "), bound,
				time.Unix(claims.Expires, 0).UTC().Format(time.RFC3339))
			return nil
		},
	}
	create.Flags().StringArrayVar(&services, "service", nil, "service the token allows (repeatable)")
	create.Flags().StringVar(&node, "node", "", "bind the token to this node name")
	create.Flags().DurationVar(&ttl, "ttl", 720*time.Hour, "how long the token can be used to join")
	create.Flags().StringVarP(&out, "output", "o", "", "write the token to this file (mode 0600) instead of stdout")
	addCAFlags(create)

	revoke := &cobra.Command{
		Use:   "revoke TOKEN_ID",
		Short: "Revoke a join token",
		Long: "Add a token ID to control.ca.dir/revoked: the token is refused from then on\n" +
			"by every control plane sharing the directory. Certificates already issued\n" +
			"run to their expiry.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := openCA(cmd)
			if err != nil {
				return err
			}
			if err := c.Revoke(args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "token %s revoked\n", args[0])
			return nil
		},
	}
	addCAFlags(revoke)
	cmd.AddCommand(create, revoke)
	return cmd
}

// newCACommand returns `mesh control ca`.
func newCACommand() *cobra.Command {
	cmd := &cobra.Command{Use: "ca", Short: "Inspect and rotate the certificate authority"}
	show := &cobra.Command{
		Use:   "show",
		Short: "Print the trust bundle (PEM) and, on stderr, each root's subject and expiry",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := openCA(cmd)
			if err != nil {
				return err
			}
			for _, r := range c.Roots() {
				fmt.Fprintf(cmd.ErrOrStderr(), "root %q expires %s\n", r.Subject.CommonName, r.NotAfter.UTC().Format(time.RFC3339))
			}
			_, err = cmd.OutOrStdout().Write(c.BundlePEM())
			return err
		},
	}
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Start a root rotation: a new signing root, old and new roots in the bundle",
		Long: "Generate a new root in control.ca.dir; the trust bundle keeps the old roots\n" +
			"and adds the new one. Distribute the directory to every control plane and\n" +
			"reload them; once every workload has renewed (one cert_ttl), run\n" +
			"`mesh control ca retire-roots`.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := openCA(cmd)
			if err != nil {
				return err
			}
			if err := c.Rotate(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "rotation started: the bundle holds %d roots\n", len(c.Roots()))
			return nil
		},
	}
	retire := &cobra.Command{
		Use:   "retire-roots",
		Short: "End a root rotation: keep only the signing root in the bundle",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := openCA(cmd)
			if err != nil {
				return err
			}
			return c.RetireRoots()
		},
	}
	for _, c := range []*cobra.Command{show, rotate, retire} {
		addCAFlags(c)
	}
	cmd.AddCommand(show, rotate, retire)
	return cmd
}
