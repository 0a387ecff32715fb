package gateway

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/meshvm/mesh/authn"
)

// newHashKeyCommand is `mesh gateway hash-key`: it reads an API key from
// standard input (not from the command line, where ps and shell history
// would show it) and prints the form control.gateway.api_keys[].hash
// stores, sha256:<hex>.
func newHashKeyCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "hash-key",
		Short: "Print the stored form of an API key read from standard input (for control.gateway.api_keys)",
		Long: "Read one API key from standard input (the first line, without its line end) and print\n" +
			"sha256:<hex>, the value of control.gateway.api_keys[].hash. The key itself is never stored.\n" +
			"Example: printf %s \"$KEY\" | mesh gateway hash-key",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			line, err := bufio.NewReader(io.LimitReader(cmd.InOrStdin(), 64<<10)).ReadString('\n')
			if err != nil && !errors.Is(err, io.EOF) {
				return fmt.Errorf("read the key from standard input: %w", err)
			}
			key := strings.TrimRight(line, "\r\n")
			if key == "" {
				return errors.New("no key on standard input (printf %s \"$KEY\" | mesh gateway hash-key)")
			}
			_, err = fmt.Fprintln(cmd.OutOrStdout(), authn.HashAPIKey(key))
			return err
		},
	}
}
