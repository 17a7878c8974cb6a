package config

import "strings"

// MayUseKeyOfMembers decides whether peer may sign with a key of usage
// that is bound to members: the member a certificate request or a
// certificate bound it to (more than one only for a key whose
// certificates were imported before bindings were recorded), or none.
//
// A bound key needs one matching rule that grants the usage and every
// member the key is bound to (each listed, or "*"), whatever the rule's
// keys say: a rule that grants a member grants that member's keys and no
// other member's. A key bound to members A and B is refused to a rule
// that grants A alone, and to a peer whose one rule grants A and another
// B: a signature with the key verifies under B's certificates too.
//
// An unbound key needs one matching rule that grants the usage, names
// the key in its keys (its id, or "*"), and is not restricted to
// particular members: its members are "*" or none. A rule that lists
// particular members never gets an unbound key, not even one its keys
// list: the key may yet be bound to another member, and a signature made
// with it now would then verify under that member's certificate.
func (p *Policy) MayUseKeyOfMembers(peer Peer, keyID, usage string, members []string) bool {
	if p == nil || keyID == "" || keyID == Wildcard {
		return false
	}
	keyID = strings.ToLower(keyID)
	for i := range p.rules {
		r := &p.rules[i]
		if !r.matches(peer) || !r.usages.has(usage) {
			continue
		}
		if len(members) > 0 {
			if r.grantsEvery(members) {
				return true
			}
			continue
		}
		if (r.anyMember || len(r.Members) == 0) && (r.anyKey || r.keys.has(keyID)) {
			return true
		}
	}
	return false
}

// grantsEvery reports whether r grants each of members; an empty or
// wildcard member is never granted.
func (r *rule) grantsEvery(members []string) bool {
	for _, m := range members {
		if m == "" || m == Wildcard || !(r.anyMember || r.members.has(m)) {
			return false
		}
	}
	return true
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
