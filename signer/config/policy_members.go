package config

// MayUseKeyOfMembers decides whether peer may sign with a key of usage
// that is bound, through its certificates, to members. A rule that grants
// a member grants the keys of that member's certificates and no other
// member's: for a key bound to members, one matching rule must grant the
// usage and one of the members, whatever its keys say. A key bound to no
// member needs the key itself granted, as MayUseKey decides.
func (p *Policy) MayUseKeyOfMembers(peer Peer, keyID, usage string, members []string) bool {
	if len(members) == 0 {
		return p.MayUseKey(peer, keyID, usage)
	}
	if p == nil {
		return false
	}
	for i := range p.rules {
		r := &p.rules[i]
		if !r.matches(peer) || !r.usages.has(usage) {
			continue
		}
		for _, m := range members {
			if m != "" && m != Wildcard && (r.anyMember || r.members.has(m)) {
				return true
			}
		}
	}
	return false
}

// IsClient reports whether a client rule matches peer, without copying
// the rules as Clients does (it is asked on every call).
func (p *Policy) IsClient(peer Peer) bool {
	if p == nil {
		return false
	}
	for i := range p.rules {
		if p.rules[i].matches(peer) {
			return true
		}
	}
	return false
}
