package redirect

import (
	"errors"
	"fmt"
	"net/netip"
	"os"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Install replaces the mesh table with the rules of s in one netlink
// transaction: the kernel applies all of it or none, so a failure leaves
// what was there, and installing twice yields the same ruleset.
func Install(s Spec) error {
	if err := s.Validate(); err != nil {
		return err
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open netlink to nftables: %w", err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	// add (a no-op if it exists), delete, add: replaces it whole.
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	chains := map[string]*nftables.Chain{}
	for _, cs := range s.chains() {
		hook := nftables.ChainHookOutput
		if cs.hook == "prerouting" {
			hook = nftables.ChainHookPrerouting
		}
		accept := nftables.ChainPolicyAccept
		chains[cs.name] = c.AddChain(&nftables.Chain{
			Name: cs.name, Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: hook, Priority: nftables.ChainPriorityRef(nftables.ChainPriority(cs.priority)), Policy: &accept,
		})
	}
	for _, r := range s.rules() {
		c.AddRule(&nftables.Rule{Table: t, Chain: chains[r.chain], Exprs: r.exprs()})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("install table inet %s: %w", TableName, permissionHint(err))
	}
	return nil
}

// Remove deletes the mesh table and every rule in it; without one it does
// nothing. Nothing else in the ruleset is touched.
func Remove() error {
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("open netlink to nftables: %w", err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: TableName}
	// add then delete in one transaction: no error when it is absent.
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("remove table inet %s: %w", TableName, permissionHint(err))
	}
	return nil
}

// Installed reports whether the mesh table exists.
func Installed() (bool, error) {
	c, err := nftables.New()
	if err != nil {
		return false, fmt.Errorf("open netlink to nftables: %w", err)
	}
	_, err = c.ListTableOfFamily(TableName, nftables.TableFamilyINet)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOENT) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("list table inet %s: %w", TableName, permissionHint(err))
	}
	return true, nil
}

func permissionHint(err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, os.ErrPermission) {
		return fmt.Errorf("%w (needs root or CAP_NET_ADMIN)", err)
	}
	return err
}

// exprs is the rule as nftables expressions: the same bytecode nft
// itself generates for the rule's text.
func (r rule) exprs() []expr.Any {
	var out []expr.Any
	for _, t := range r.terms {
		out = append(out, t.exprs()...)
	}
	return out
}

func (t term) exprs() []expr.Any {
	switch t.kind {
	case tUID:
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeySKUID, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(t.uid)},
		}
	case tL4:
		return l4(t.proto)
	case tDport:
		out := append(l4(t.proto), &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2})
		if t.ports.Lo == t.ports.Hi {
			return append(out, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(t.ports.Lo)})
		}
		return append(out,
			&expr.Cmp{Op: expr.CmpOpGte, Register: 1, Data: binaryutil.BigEndian.PutUint16(t.ports.Lo)},
			&expr.Cmp{Op: expr.CmpOpLte, Register: 1, Data: binaryutil.BigEndian.PutUint16(t.ports.Hi)})
	case tDaddr:
		return daddr(t.prefix, t.neg)
	case tIifLo:
		name := make([]byte, 16)
		copy(name, "lo")
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
		}
	case tReturn:
		return []expr.Any{&expr.Verdict{Kind: expr.VerdictReturn}}
	case tRedirect:
		return []expr.Any{
			&expr.Immediate{Register: 1, Data: binaryutil.BigEndian.PutUint16(t.ports.Lo)},
			&expr.Redir{RegisterProtoMin: 1, RegisterProtoMax: 1, Flags: unix.NF_NAT_RANGE_PROTO_SPECIFIED},
		}
	}
	panic(fmt.Sprintf("redirect: term kind %d has no expressions", t.kind))
}

func l4(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

// daddr matches the destination address against p, as nft does: the
// family first, then the bytes the prefix covers when it ends on a byte,
// else the whole address under a mask.
func daddr(p netip.Prefix, neg bool) []expr.Any {
	p = p.Masked()
	fam, off := byte(unix.NFPROTO_IPV4), uint32(16)
	if p.Addr().Is6() {
		fam, off = unix.NFPROTO_IPV6, 24
	}
	addr := p.Addr().AsSlice()
	bits := p.Bits()
	n := uint32(bits / 8) // whole bytes: nft loads just those
	if bits%8 != 0 {
		n = uint32(len(addr)) // else the whole address, masked
	}
	op := expr.CmpOpEq
	if neg {
		op = expr.CmpOpNeq
	}
	out := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{fam}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: n},
	}
	if bits%8 != 0 {
		mask := make([]byte, n)
		for i := range mask {
			switch {
			case (i+1)*8 <= bits:
				mask[i] = 0xff
			case i*8 < bits:
				mask[i] = byte(0xff << (8 - bits%8))
			}
		}
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: mask, Xor: make([]byte, n)})
	}
	return append(out, &expr.Cmp{Op: op, Register: 1, Data: addr[:n]})
}
