// Package buildinfo holds the version stamped into the binary at build time
// (make build sets it with -ldflags) and the `mesh version` command.
package buildinfo

import (
	"fmt"
	"runtime"

	"github.com/spf13/cobra"
)

// Set with -ldflags "-X github.com/meshvm/mesh/buildinfo.Version=...".
var (
	Version = "dev"
	Commit  = "unknown"
)

// NewCommand returns `mesh version`.
func NewCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the mesh version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			_, err := fmt.Fprintf(cmd.OutOrStdout(), "mesh %s (commit %s, %s, %s/%s)\n",
				Version, Commit, runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return err
		},
	}
}
