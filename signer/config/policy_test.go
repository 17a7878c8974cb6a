package config

import (
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
)

const policyDoc = `
[policy.admins]
uids = [0]
gids = [10]

[[policy.client]]
name = "security-server"
uids = [998, 500]
keys = ["*"]
usages = ["sign"]
members = ["*"]

[[policy.client]]
name = "timestamper"
gids = [997]
keys = ["AABB"]
usages = ["tsa", "auth"]
members = ["EE/GOV/70000310"]

[[policy.client]]
name = "nothing-granted"
uids = [600]
`

func testPolicy(t *testing.T) *Policy {
	t.Helper()
	c, err := Parse([]byte(policyDoc), "policy.toml")
	if err != nil {
		t.Fatal(err)
	}
	return c.Policy
}

func TestPolicyRole(t *testing.T) {
	p := testPolicy(t)
	tests := []struct {
		name          string
		peer          Peer
		admin, client bool
	}{
		{"admin by uid", Peer{UID: 0, GID: 1234}, true, false},
		{"admin by gid", Peer{UID: 4321, GID: 10}, true, false},
		{"admin and client is both", Peer{UID: 500, GID: 10}, true, true},
		{"client by uid", Peer{UID: 998, GID: 998}, false, true},
		{"client by gid", Peer{UID: 1001, GID: 997}, false, true},
		{"client with no grants is still a client", Peer{UID: 600, GID: 600}, false, true},
		{"unknown peer", Peer{UID: 1000, GID: 1000}, false, false},
		{"uid is not matched against gids", Peer{UID: 10, GID: 1000}, false, false},
		{"gid is not matched against uids", Peer{UID: 1000, GID: 998}, false, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.IsAdmin(tc.peer); got != tc.admin {
				t.Errorf("IsAdmin(%+v) = %v, want %v", tc.peer, got, tc.admin)
			}
			if got := p.IsClient(tc.peer); got != tc.client {
				t.Errorf("IsClient(%+v) = %v, want %v", tc.peer, got, tc.client)
			}
		})
	}
}

func TestPolicyMayUseKey(t *testing.T) {
	p := testPolicy(t)
	ss := Peer{UID: 998, GID: 998}
	tsa := Peer{UID: 1001, GID: 997}
	both := Peer{UID: 998, GID: 997}
	tests := []struct {
		name  string
		peer  Peer
		key   string
		usage string
		want  bool
	}{
		{"wildcard key, granted usage", ss, "0a1b", UsageSign, true},
		{"wildcard key, other usage", ss, "0a1b", UsageAuth, false},
		{"wildcard key, unknown usage", ss, "0a1b", "encrypt", false},
		{"empty usage", ss, "0a1b", "", false},
		{"empty key id", ss, "", UsageSign, false},
		{"wildcard as key id", ss, "*", UsageSign, false},
		{"listed key by gid", tsa, "aabb", UsageTSA, true},
		{"listed key, upper case", tsa, "AABB", UsageAuth, true},
		{"listed key, usage not granted", tsa, "aabb", UsageSign, false},
		{"unlisted key", tsa, "ccdd", UsageTSA, false},
		{"key and usage must come from one rule", both, "ccdd", UsageTSA, false},
		{"either rule may grant", both, "ccdd", UsageSign, true},
		{"client with empty lists", Peer{UID: 600}, "aabb", UsageSign, false},
		{"admin is not a client", Peer{UID: 0, GID: 0}, "aabb", UsageSign, false},
		{"admin by gid who is a client", Peer{UID: 500, GID: 10}, "aabb", UsageSign, true},
		{"deny by default", Peer{UID: 1000, GID: 1000}, "aabb", UsageSign, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.MayUseKey(tc.peer, tc.key, tc.usage); got != tc.want {
				t.Errorf("MayUseKey(%+v, %q, %q) = %v, want %v", tc.peer, tc.key, tc.usage, got, tc.want)
			}
		})
	}
}

func TestPolicyMayUseMember(t *testing.T) {
	p := testPolicy(t)
	tests := []struct {
		name   string
		peer   Peer
		member string
		want   bool
	}{
		{"wildcard", Peer{UID: 998}, "FI/COM/123", true},
		{"listed", Peer{UID: 1, GID: 997}, "EE/GOV/70000310", true},
		{"unlisted", Peer{UID: 1, GID: 997}, "EE/GOV/70000311", false},
		{"case matters", Peer{UID: 1, GID: 997}, "ee/gov/70000310", false},
		{"empty member", Peer{UID: 998}, "", false},
		{"wildcard as member", Peer{UID: 1, GID: 997}, "*", false},
		{"client with no members", Peer{UID: 600}, "EE/GOV/70000310", false},
		{"admin is not a client", Peer{UID: 0}, "EE/GOV/70000310", false},
		{"deny by default", Peer{UID: 1000, GID: 1000}, "EE/GOV/70000310", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.MayUseMember(tc.peer, tc.member); got != tc.want {
				t.Errorf("MayUseMember(%+v, %q) = %v, want %v", tc.peer, tc.member, got, tc.want)
			}
		})
	}
}

func TestPolicyMayUseUsage(t *testing.T) {
	p := testPolicy(t)
	tests := []struct {
		name  string
		peer  Peer
		usage string
		want  bool
	}{
		{"granted by gid", Peer{UID: 1, GID: 997}, "tsa", true},
		{"another usage of the rule", Peer{UID: 1, GID: 997}, "auth", true},
		{"usage not granted", Peer{UID: 998}, "tsa", false},
		{"client with no usages", Peer{UID: 600}, "tsa", false},
		{"admin is not a client", Peer{UID: 0}, "tsa", false},
		{"empty usage", Peer{UID: 1, GID: 997}, "", false},
		{"deny by default", Peer{UID: 1000, GID: 1000}, "tsa", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := p.MayUseUsage(tc.peer, tc.usage); got != tc.want {
				t.Errorf("MayUseUsage(%+v, %q) = %v, want %v", tc.peer, tc.usage, got, tc.want)
			}
		})
	}
	var none *Policy
	if none.MayUseUsage(Peer{UID: 1, GID: 997}, "tsa") {
		t.Error("a nil policy granted a usage")
	}
}

func TestPolicyClients(t *testing.T) {
	p := testPolicy(t)
	names := func(rs []ClientRule) []string {
		var out []string
		for _, r := range rs {
			out = append(out, r.Name)
		}
		return out
	}
	for _, tc := range []struct {
		peer Peer
		want []string
	}{
		{Peer{UID: 998, GID: 997}, []string{"security-server", "timestamper"}},
		{Peer{UID: 600}, []string{"nothing-granted"}},
		{Peer{UID: 0}, nil},
		{Peer{UID: 1000, GID: 1000}, nil},
	} {
		if got := names(p.Clients(tc.peer)); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("Clients(%+v) = %q, want %q", tc.peer, got, tc.want)
		}
	}
}

func TestNilPolicyDeniesAll(t *testing.T) {
	var p *Policy
	peer := Peer{UID: 0, GID: 0}
	if p.IsClient(peer) || p.IsAdmin(peer) || p.Clients(peer) != nil ||
		p.MayUseKey(peer, "aa", UsageSign) || p.MayUseMember(peer, "EE/GOV/1") ||
		p.ClientRules() != nil || len(p.Admins().UIDs) != 0 {
		t.Error("a nil policy granted something")
	}
}

func TestPolicyIsImmutable(t *testing.T) {
	admins := Admins{UIDs: []uint32{0}}
	rules := []ClientRule{{Name: "c", UIDs: []uint32{5}, Keys: []string{"aa"}, Usages: []string{UsageSign}, Members: []string{"EE/GOV/1"}}}
	p, err := NewPolicy(admins, rules)
	if err != nil {
		t.Fatal(err)
	}
	// Change what was passed in and what came out.
	admins.UIDs[0] = 7
	rules[0].UIDs[0] = 7
	rules[0].Keys[0] = "bb"
	got := p.ClientRules()
	got[0].Usages[0] = UsageTSA
	got[0].Members[0] = "*"
	p.Admins().UIDs[0] = 7
	p.Clients(Peer{UID: 5})[0].Keys[0] = "*"

	if !p.IsAdmin(Peer{UID: 0}) || p.IsAdmin(Peer{UID: 7}) {
		t.Error("admins changed")
	}
	if !p.MayUseKey(Peer{UID: 5}, "aa", UsageSign) || p.MayUseKey(Peer{UID: 5}, "bb", UsageSign) ||
		p.MayUseKey(Peer{UID: 7}, "aa", UsageSign) || p.MayUseKey(Peer{UID: 5}, "aa", UsageTSA) ||
		p.MayUseMember(Peer{UID: 5}, "EE/GOV/2") {
		t.Error("client rules changed")
	}
	if want := []ClientRule{{Name: "c", UIDs: []uint32{5}, Keys: []string{"aa"}, Usages: []string{UsageSign}, Members: []string{"EE/GOV/1"}}}; !reflect.DeepEqual(p.ClientRules(), want) {
		t.Errorf("ClientRules() = %+v", p.ClientRules())
	}
}

func TestPolicyConcurrentUse(t *testing.T) {
	p := testPolicy(t)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 1000 {
				peer := Peer{UID: uint32(990 + (i+j)%10), GID: uint32(995 + j%5)}
				p.IsAdmin(peer)
				p.IsClient(peer)
				p.MayUseKey(peer, "aabb", UsageTSA)
				p.MayUseMember(peer, "EE/GOV/70000310")
				p.Clients(peer)
			}
		})
	}
	wg.Wait()
}

func TestNewPolicyValidates(t *testing.T) {
	tests := []struct {
		name    string
		admins  Admins
		clients []ClientRule
		want    string
	}{
		{"uid -1", Admins{UIDs: []uint32{1<<32 - 1}}, nil, "policy.admins.uids[0]: 4294967295 is not a uid"},
		{"unknown usage", Admins{}, []ClientRule{{Name: "c", UIDs: []uint32{1}, Usages: []string{"decrypt"}}}, `policy.client[0].usages[0]: "decrypt"`},
		{"no name", Admins{}, []ClientRule{{UIDs: []uint32{1}}}, "policy.client[0].name: is missing"},
		{"matches nobody", Admins{}, []ClientRule{{Name: "c"}}, "matches nobody"},
		{"bad key", Admins{}, []ClientRule{{Name: "c", UIDs: []uint32{1}, Keys: []string{"0x12"}}}, "is not a key id"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewPolicy(tc.admins, tc.clients)
			if p != nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("NewPolicy = %v, %v; want nil and an error containing %q", p, err, tc.want)
			}
		})
	}
}
