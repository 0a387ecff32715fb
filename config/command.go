package config

import (
	"fmt"

	"github.com/spf13/cobra"
)

// NewCommand returns `mesh config` with its `validate` subcommand.
func NewCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "config", Short: "Work with mesh config files"}
	var role string
	validate := &cobra.Command{
		Use:   "validate FILE",
		Short: "Check a config file and print the effective config",
		Long: "Check a config file (with MESH_* environment variables applied) and print\n" +
			"the effective config, secrets redacted. Exits 2 and names the file, line and\n" +
			"field of every problem when the file is invalid.",
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.ExactArgs(1)(cmd, args); err != nil {
				_ = cmd.Usage()
				return err
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			r, err := parseRole(role)
			if err != nil {
				return err
			}
			cfg, err := Load(Options{File: args[0], Role: r})
			if err != nil {
				return err
			}
			out, err := cfg.YAML()
			if err != nil {
				return fmt.Errorf("render effective config: %w", err)
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	validate.Flags().StringVar(&role, "role", "", "require the fields of this role: agent, control or gateway (default: check what the file sets)")
	cmd.AddCommand(validate)
	cmd.AddCommand(newDiffCommand())
	return cmd
}

func parseRole(s string) (Role, error) {
	switch s {
	case "":
		return RoleAny, nil
	case "agent":
		return RoleAgent, nil
	case "control":
		return RoleControl, nil
	case "gateway":
		return RoleGateway, nil
	}
	return RoleAny, &Error{Syntax: fmt.Sprintf("--role %q is not agent, control or gateway", s)}
}
