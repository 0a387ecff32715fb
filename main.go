// Command mesh is a service mesh for VM fleets: one binary whose roles are
// the per-app sidecar (`mesh agent`), the xDS control plane
// (`mesh control`) and the edge gateway (`mesh gateway`).
package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshvm/mesh/agent"
	"github.com/meshvm/mesh/buildinfo"
	"github.com/meshvm/mesh/config"
	"github.com/meshvm/mesh/controlplane"
	"github.com/meshvm/mesh/enroll"
	"github.com/meshvm/mesh/gateway"
	"github.com/meshvm/mesh/meshctl"
	"github.com/meshvm/mesh/redirect"
)

func main() {
	root := &cobra.Command{
		Use:           "mesh",
		Short:         "A service mesh for VM fleets",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().StringP("config", "c", "", "config file (default "+config.DefaultFile+" if it exists)")
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		if ce, ok := config.FlagError(err); ok {
			return ce
		}
		return usageError{err}
	})
	root.AddCommand(agent.NewCommand(), config.NewCommand(), buildinfo.NewCommand())
	root.AddCommand(controlplane.NewCommand(), gateway.NewCommand(), redirect.NewCommand())
	root.AddCommand(meshctl.NewStatusCommand(), meshctl.NewInspectCommand(), enroll.NewCommand())
	if err := root.Execute(); err != nil {
		// A command that says what it found by its exit status alone
		// (`mesh config diff`) has printed what it had to.
		var status interface{ ExitCode() int }
		if errors.As(err, &status) {
			os.Exit(status.ExitCode())
		}
		fmt.Fprintln(os.Stderr, "mesh:", err)
		os.Exit(exitCode(err))
	}
}

type usageError struct{ error }

// exitCode is 2 for bad config and bad usage, 1 for anything else.
func exitCode(err error) int {
	var ce *config.Error
	var ue usageError
	if errors.As(err, &ce) || errors.As(err, &ue) ||
		strings.HasPrefix(err.Error(), "unknown command") ||
		strings.Contains(err.Error(), "arg(s), received") {
		return 2
	}
	return 1
}
