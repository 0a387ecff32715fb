package xds

import "github.com/meshvm/mesh/config"

// SetDefaults replaces the policy of a node's own service when the model
// does not know the service (see New), e.g. after a config reload. The
// next Update rebuilds the own resources of the nodes it applies to.
func (s *Server) SetDefaults(defaults config.Policy) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.defaults = defaults
}
