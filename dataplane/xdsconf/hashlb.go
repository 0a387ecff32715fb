package xdsconf

import (
	"fmt"
	"strings"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	maglevv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/maglev/v3"
	ringhashv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/ring_hash/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshvm/mesh/dataplane/table"
	"github.com/meshvm/mesh/governance/balancer"
)

// hashLB reads the sizes of a ring_hash or maglev cluster's balancer, from
// ring_hash_lb_config / maglev_lb_config (lb_policy RING_HASH, MAGLEV) or
// from the typed config of the load_balancing_policy entry the agent took,
// and checks them as Envoy does (XX_HASH only, minimum ≤ maximum ≤ 8M, a
// prime table size).
func hashLB(c *clusterv3.Cluster) (table.HashLB, error) {
	var h table.HashLB
	var hashFn string
	if lbp := c.GetLoadBalancingPolicy(); lbp != nil {
		for _, pol := range lbp.GetPolicies() {
			tc := pol.GetTypedExtensionConfig()
			name := tc.GetName()
			switch {
			case strings.HasSuffix(name, ".round_robin"), strings.HasSuffix(name, ".least_request"), strings.HasSuffix(name, ".random"):
				return h, nil // the policy lbPolicy took
			case strings.HasSuffix(name, ".ring_hash"):
				if tc.GetTypedConfig() != nil {
					var rh ringhashv3.RingHash
					if err := tc.GetTypedConfig().UnmarshalTo(&rh); err != nil {
						return h, fmt.Errorf("load_balancing_policy %s: %w", name, err)
					}
					if rh.GetUseHostnameForHashing() {
						return h, fmt.Errorf("load_balancing_policy %s: use_hostname_for_hashing is not supported", name)
					}
					h.MinRingSize, h.MaxRingSize = u64(rh.GetMinimumRingSize()), u64(rh.GetMaximumRingSize())
					if rh.GetHashFunction() != ringhashv3.RingHash_DEFAULT_HASH && rh.GetHashFunction() != ringhashv3.RingHash_XX_HASH {
						hashFn = rh.GetHashFunction().String()
					}
				}
				return h, checkHashLB(h, hashFn, "load_balancing_policy "+name)
			case strings.HasSuffix(name, ".maglev"):
				if tc.GetTypedConfig() != nil {
					var mg maglevv3.Maglev
					if err := tc.GetTypedConfig().UnmarshalTo(&mg); err != nil {
						return h, fmt.Errorf("load_balancing_policy %s: %w", name, err)
					}
					h.MaglevTableSize = u64(mg.GetTableSize())
				}
				return h, checkHashLB(h, "", "load_balancing_policy "+name)
			}
		}
		return h, nil
	}
	switch c.GetLbPolicy() {
	case clusterv3.Cluster_RING_HASH:
		rc := c.GetRingHashLbConfig()
		h.MinRingSize, h.MaxRingSize = u64(rc.GetMinimumRingSize()), u64(rc.GetMaximumRingSize())
		if rc.GetHashFunction() != clusterv3.Cluster_RingHashLbConfig_XX_HASH {
			hashFn = rc.GetHashFunction().String()
		}
		return h, checkHashLB(h, hashFn, "ring_hash_lb_config")
	case clusterv3.Cluster_MAGLEV:
		h.MaglevTableSize = u64(c.GetMaglevLbConfig().GetTableSize())
		return h, checkHashLB(h, "", "maglev_lb_config")
	}
	return h, nil
}

func checkHashLB(h table.HashLB, hashFn, field string) error {
	if hashFn != "" {
		return fmt.Errorf("%s.hash_function: %s is not supported (XX_HASH)", field, hashFn)
	}
	pol := balancer.RingHash
	if h.MaglevTableSize != 0 {
		pol = balancer.Maglev
	}
	// The picker's own checks, on a picker without endpoints.
	if _, err := balancer.New(nil, balancer.Options{Policy: pol, MinRingSize: h.MinRingSize, MaxRingSize: h.MaxRingSize, TableSize: h.MaglevTableSize}); err != nil {
		return fmt.Errorf("%s: %w", field, err)
	}
	return nil
}

func u64(v *wrapperspb.UInt64Value) uint64 { return v.GetValue() }
