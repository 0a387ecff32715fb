package gwconf

import (
	"fmt"
	"regexp"

	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacfilterv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshvm/mesh/wire"
)

// parseClaimRules reads a route's RBACPerRoute as claim rules. Only the
// shape mesh control writes is accepted, because only it means exactly
// what the gateway checks: ALLOW, one policy, any permission, and a
// principal that is an and_ids of metadata matchers on jwt_authn's
// jwt_payload.<claim>, each an or_match of the word regex and the list
// one_of exact of the same value.
func parseClaimRules(a *anypb.Any) ([]Claim, error) {
	var pr rbacfilterv3.RBACPerRoute
	if err := a.UnmarshalTo(&pr); err != nil {
		return nil, err
	}
	rb := pr.GetRbac()
	if rb == nil {
		return nil, nil
	}
	if rb.GetMatcher() != nil || rb.GetShadowRules() != nil || rb.GetShadowMatcher() != nil {
		return nil, fmt.Errorf("matcher/shadow rules: not supported")
	}
	rules := rb.GetRules()
	if rules == nil {
		return nil, nil
	}
	if rules.GetAction() != rbacv3.RBAC_ALLOW || len(rules.GetPolicies()) != 1 {
		return nil, fmt.Errorf("rules: want ALLOW with one policy of claim rules")
	}
	var pol *rbacv3.Policy
	for _, p := range rules.GetPolicies() {
		pol = p
	}
	if len(pol.GetPermissions()) != 1 || !pol.GetPermissions()[0].GetAny() || len(pol.GetPrincipals()) != 1 || pol.GetCondition() != nil || pol.GetCelConfig() != nil {
		return nil, fmt.Errorf("rules: want any permission and one and_ids principal of claim rules")
	}
	ids := pol.GetPrincipals()[0].GetAndIds().GetIds()
	if len(ids) == 0 {
		return nil, fmt.Errorf("rules: want an and_ids principal of claim rules")
	}
	var out []Claim
	for i, id := range ids {
		c, err := claimRule(id.GetMetadata())
		if err != nil {
			return nil, fmt.Errorf("rules principal and_ids[%d]: %w", i, err)
		}
		out = append(out, c)
	}
	return out, nil
}

func claimRule(m *matcherv3.MetadataMatcher) (Claim, error) {
	if m == nil || m.GetFilter() != wire.JWTAuthnFilter || len(m.GetPath()) != 2 || m.GetPath()[0].GetKey() != wire.JWTPayloadMetadataKey || m.GetPath()[1].GetKey() == "" || m.GetInvert() {
		return Claim{}, fmt.Errorf("want a metadata matcher on %s %s.<claim>", wire.JWTAuthnFilter, wire.JWTPayloadMetadataKey)
	}
	claim := m.GetPath()[1].GetKey()
	vms := m.GetValue().GetOrMatch().GetValueMatchers()
	if len(vms) != 2 {
		return Claim{}, fmt.Errorf("claim %s: want an or_match of a word regex and a list one_of", claim)
	}
	want := vms[1].GetListMatch().GetOneOf().GetStringMatch().GetExact()
	re := vms[0].GetStringMatch().GetSafeRegex().GetRegex()
	if want == "" || re != `(.* )?`+regexp.QuoteMeta(want)+`( .*)?` {
		return Claim{}, fmt.Errorf("claim %s: the word regex and the list value do not name the same value", claim)
	}
	return Claim{Claim: claim, Contains: want}, nil
}
