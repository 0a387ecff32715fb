package observability

import "github.com/prometheus/client_golang/prometheus"

// maxRuleLabels bounds the rule label of mesh_rbac_decisions_total per
// agent: rule names come from the control plane's config, not callers.
const maxRuleLabels = 256

// AuthzDecision returns the counter of one authorization decision of
// service (action "allow" or "deny", rule the rule that decided or
// "default"), for the request path to keep: resolve it once per table and
// rule, not per request. A nil Metrics gives a nil counter (AuthzCount
// accepts it).
func (m *Metrics) AuthzDecision(service, action, rule string) prometheus.Counter {
	if m == nil {
		return nil
	}
	return m.rbacDecisions.WithLabelValues(m.names.value(service), action, m.ruleName(rule))
}

// ruleName bounds the rule label values: past maxRuleLabels distinct
// names, "other".
func (m *Metrics) ruleName(rule string) string {
	return m.rules.value(rule)
}

// AuthzCount counts one decision on c (from AuthzDecision); nil: nothing.
func AuthzCount(c prometheus.Counter) {
	if c != nil {
		c.Inc()
	}
}
