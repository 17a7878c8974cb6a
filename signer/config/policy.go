package config

import (
	"slices"
	"strings"
)

// Peer is the caller on the other end of a Unix socket, as SO_PEERCRED
// reports it; it has the fields of peercred.Peer, which this package does
// not import (it stays free of cgo). GID is the peer's primary group:
// supplementary groups are not reported by the kernel and never match.
type Peer struct {
	UID uint32
	GID uint32
	PID int32
}

// Key usages a client rule may grant.
const (
	UsageSign = "sign" // signing messages (X-Road sign keys)
	UsageAuth = "auth" // TLS authentication keys
	UsageTSA  = "tsa"  // timestamping with a TSA key
	// UsageAudit is the usage of the key that signs the audit log's
	// checkpoints. A rule that grants it lets its peers sign any digest
	// with that key, and so forge checkpoints: grant it to nobody unless
	// you mean to.
	UsageAudit = "audit"
)

// Wildcard in a rule's keys or members grants every key or member.
const Wildcard = "*"

// maxID is the largest uid or gid a policy accepts; (uid_t)-1 is not one.
const maxID = 1<<32 - 2

// Admins lists who is an admin: any peer whose uid or primary gid is
// listed.
type Admins struct {
	UIDs []uint32
	GIDs []uint32
}

// ClientRule is one [[policy.client]]: the peers it matches (by uid or
// primary gid) and what they may sign with.
type ClientRule struct {
	// Name identifies the rule in logs and errors; unique.
	Name string
	// UIDs and GIDs select the peers; a peer matches if its uid is in UIDs
	// or its primary gid is in GIDs. At least one of the two is non-empty.
	UIDs []uint32
	GIDs []uint32
	// Keys are the key ids (lower-case hex CKA_ID) the peers may sign with,
	// or Wildcard for all. They grant only keys bound to no member, and
	// only in a rule not restricted to particular members (Members empty
	// or Wildcard); a key bound to a member is granted by Members (see
	// MayUseKeyOfMembers).
	Keys []string
	// Usages are the key usages (UsageSign, UsageAuth, UsageTSA,
	// UsageAudit) the peers may sign with; a usage not listed is never
	// granted, whatever Keys says.
	Usages []string
	// Members are the member identifiers (e.g. "EE/GOV/70000310") whose
	// signing information and keys the peers may use, or Wildcard for all.
	// A rule that lists particular members signs only with keys bound to
	// them, whatever Keys says.
	Members []string
}

func (r ClientRule) clone() ClientRule {
	r.UIDs = slices.Clone(r.UIDs)
	r.GIDs = slices.Clone(r.GIDs)
	r.Keys = slices.Clone(r.Keys)
	r.Usages = slices.Clone(r.Usages)
	r.Members = slices.Clone(r.Members)
	return r
}

// Policy is the access policy: an immutable value, safe for concurrent use,
// that denies whatever it does not grant. A nil *Policy denies everything.
// Build one with NewPolicy, Parse or ReloadPolicy.
type Policy struct {
	admins    Admins
	adminUIDs set[uint32]
	adminGIDs set[uint32]
	rules     []rule
}

type set[T comparable] map[T]struct{}

func setOf[T comparable](vs []T) set[T] {
	s := make(set[T], len(vs))
	for _, v := range vs {
		s[v] = struct{}{}
	}
	return s
}

func (s set[T]) has(v T) bool { _, ok := s[v]; return ok }

// rule is a ClientRule compiled for lookups.
type rule struct {
	ClientRule
	uids, gids set[uint32]
	anyKey     bool
	keys       set[string]
	usages     set[string]
	anyMember  bool
	members    set[string]
}

func compileRule(r ClientRule) rule {
	return rule{
		ClientRule: r,
		uids:       setOf(r.UIDs),
		gids:       setOf(r.GIDs),
		anyKey:     slices.Contains(r.Keys, Wildcard),
		keys:       setOf(r.Keys),
		usages:     setOf(r.Usages),
		anyMember:  slices.Contains(r.Members, Wildcard),
		members:    setOf(r.Members),
	}
}

func (r *rule) matches(p Peer) bool { return r.uids.has(p.UID) || r.gids.has(p.GID) }

// NewPolicy validates admins and clients as Parse validates [policy] and
// returns a policy holding copies of them. Key ids are stored in lower
// case. Errors wrap ErrInvalid.
func NewPolicy(admins Admins, clients []ClientRule) (*Policy, error) {
	ck := &checker{}
	p := ck.policy(admins, clients)
	if err := ck.err(); err != nil {
		return nil, err
	}
	return p, nil
}

// Admins returns a copy of the admin lists.
func (p *Policy) Admins() Admins {
	if p == nil {
		return Admins{}
	}
	return Admins{UIDs: slices.Clone(p.admins.UIDs), GIDs: slices.Clone(p.admins.GIDs)}
}

// ClientRules returns copies of all client rules, in file order.
func (p *Policy) ClientRules() []ClientRule {
	if p == nil {
		return nil
	}
	out := make([]ClientRule, len(p.rules))
	for i := range p.rules {
		out[i] = p.rules[i].clone()
	}
	return out
}

// IsAdmin reports whether peer's uid or primary gid is listed in
// [policy.admins].
func (p *Policy) IsAdmin(peer Peer) bool {
	return p != nil && (p.adminUIDs.has(peer.UID) || p.adminGIDs.has(peer.GID))
}

// Clients returns copies of the client rules that match peer, in file
// order; none for a peer no rule names.
func (p *Policy) Clients(peer Peer) []ClientRule {
	if p == nil {
		return nil
	}
	var out []ClientRule
	for i := range p.rules {
		if p.rules[i].matches(peer) {
			out = append(out, p.rules[i].clone())
		}
	}
	return out
}

// MayUseKey reports whether one client rule that matches peer grants both
// the key keyID (hex, either case) and the usage. An empty keyID or an
// unknown usage is never granted. It knows nothing of the members keys
// are bound to: whether a caller may sign with a key is decided by
// MayUseKeyOfMembers.
func (p *Policy) MayUseKey(peer Peer, keyID, usage string) bool {
	if p == nil || keyID == "" || keyID == Wildcard {
		return false
	}
	keyID = strings.ToLower(keyID)
	for i := range p.rules {
		r := &p.rules[i]
		if r.matches(peer) && r.usages.has(usage) && (r.anyKey || r.keys.has(keyID)) {
			return true
		}
	}
	return false
}

// MayUseUsage reports whether a client rule that matches peer grants
// usage, whatever key: for services that use no key of the caller's, as
// the upstream time-stamping mode (usage tsa).
func (p *Policy) MayUseUsage(peer Peer, usage string) bool {
	if p == nil {
		return false
	}
	for i := range p.rules {
		if r := &p.rules[i]; r.matches(peer) && r.usages.has(usage) {
			return true
		}
	}
	return false
}

// MayUseMember reports whether a client rule that matches peer grants the
// member identifier (compared exactly). An empty member is never granted.
func (p *Policy) MayUseMember(peer Peer, member string) bool {
	if p == nil || member == "" || member == Wildcard {
		return false
	}
	for i := range p.rules {
		r := &p.rules[i]
		if r.matches(peer) && (r.anyMember || r.members.has(member)) {
			return true
		}
	}
	return false
}
