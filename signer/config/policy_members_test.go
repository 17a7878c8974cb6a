package config

import "testing"

func TestPolicyMayUseKeyOfMembers(t *testing.T) {
	p, err := NewPolicy(Admins{UIDs: []uint32{0}}, []ClientRule{
		{Name: "ss-a", UIDs: []uint32{100}, Keys: []string{Wildcard}, Usages: []string{UsageSign}, Members: []string{"EE/GOV/A"}},
		{Name: "ss-b", UIDs: []uint32{200}, Keys: []string{"aa"}, Usages: []string{UsageSign}, Members: []string{"EE/GOV/B"}},
		{Name: "all", UIDs: []uint32{300}, Keys: []string{Wildcard}, Usages: []string{UsageSign}, Members: []string{Wildcard}},
		{Name: "auth-only", UIDs: []uint32{400}, Keys: []string{Wildcard}, Usages: []string{UsageAuth}, Members: []string{Wildcard}},
		{Name: "named-key", UIDs: []uint32{500}, Keys: []string{"EE"}, Usages: []string{UsageSign}},
		{Name: "any-key-no-member", UIDs: []uint32{600}, Keys: []string{Wildcard}, Usages: []string{UsageSign}},
		{Name: "a-with-named-key", UIDs: []uint32{700}, Keys: []string{"ee"}, Usages: []string{UsageSign}, Members: []string{"EE/GOV/A"}},
		{Name: "a-and-b", UIDs: []uint32{800}, Keys: []string{Wildcard}, Usages: []string{UsageSign}, Members: []string{"EE/GOV/A", "EE/GOV/B"}},
		{Name: "split-a", UIDs: []uint32{900}, Keys: []string{Wildcard}, Usages: []string{UsageSign}, Members: []string{"EE/GOV/A"}},
		{Name: "split-b", UIDs: []uint32{900}, Keys: []string{Wildcard}, Usages: []string{UsageSign}, Members: []string{"EE/GOV/B"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		uid     uint32
		key     string
		usage   string
		members []string
		want    bool
	}{
		{"own member's key", 100, "bb", UsageSign, []string{"EE/GOV/A"}, true},
		{"another member's key, whatever the keys say", 100, "bb", UsageSign, []string{"EE/GOV/B"}, false},
		{"key of two members, one allowed", 100, "bb", UsageSign, []string{"EE/GOV/B", "EE/GOV/A"}, false},
		{"key of two members, both allowed", 800, "bb", UsageSign, []string{"EE/GOV/B", "EE/GOV/A"}, true},
		{"key of two members, every member allowed", 300, "bb", UsageSign, []string{"EE/GOV/B", "EE/GOV/A"}, true},
		{"key of two members, each allowed by another rule", 900, "bb", UsageSign, []string{"EE/GOV/B", "EE/GOV/A"}, false},
		{"key of two members, one of them empty", 800, "bb", UsageSign, []string{"EE/GOV/A", ""}, false},
		{"unbound key, rule restricted to a member, keys *", 100, "bb", UsageSign, nil, false},
		{"unbound key, rule restricted to a member, key named", 700, "ee", UsageSign, nil, false},
		{"bound key of the rule's member, key named", 700, "ee", UsageSign, []string{"EE/GOV/A"}, true},
		{"unbound key, every member, keys *", 300, "dd", UsageSign, nil, true},
		{"unbound key, no members, key named", 500, "ee", UsageSign, nil, true},
		{"unbound key, no members, key named in another case", 500, "EE", UsageSign, nil, true},
		{"unbound key, no members, keys *", 600, "ee", UsageSign, nil, true},
		{"unbound key, no members, key not named", 500, "dd", UsageSign, nil, false},
		{"bound key, no members, key named", 500, "ee", UsageSign, []string{"EE/GOV/A"}, false},
		{"unbound key, every member, usage not granted", 400, "dd", UsageSign, nil, false},
		{"member grant covers a key not in keys", 200, "cc", UsageSign, []string{"EE/GOV/B"}, true},
		{"unbound key not in keys", 200, "cc", UsageSign, nil, false},
		{"wildcard member", 300, "dd", UsageSign, []string{"EE/GOV/Z"}, true},
		{"usage not granted", 400, "dd", UsageSign, []string{"EE/GOV/Z"}, false},
		{"unknown peer", 999, "dd", UsageSign, []string{"EE/GOV/A"}, false},
		{"empty member never matches", 100, "dd", UsageSign, []string{""}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.MayUseKeyOfMembers(Peer{UID: tt.uid, GID: 12345}, tt.key, tt.usage, tt.members); got != tt.want {
				t.Fatalf("MayUseKeyOfMembers = %v, want %v", got, tt.want)
			}
		})
	}
	var nilPolicy *Policy
	if nilPolicy.MayUseKeyOfMembers(Peer{UID: 100}, "bb", UsageSign, []string{"EE/GOV/A"}) {
		t.Fatal("a nil policy granted a key")
	}
}

func TestPolicyIsClient(t *testing.T) {
	p, err := NewPolicy(Admins{UIDs: []uint32{0}}, []ClientRule{{Name: "c", GIDs: []uint32{50}, Keys: []string{Wildcard}, Usages: []string{UsageSign}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		peer Peer
		want bool
	}{{Peer{UID: 7, GID: 50}, true}, {Peer{UID: 0, GID: 0}, false}, {Peer{UID: 50, GID: 7}, false}} {
		if got := p.IsClient(tt.peer); got != tt.want || got != (len(p.Clients(tt.peer)) > 0) {
			t.Errorf("IsClient(%+v) = %v, want %v", tt.peer, got, tt.want)
		}
	}
	var nilPolicy *Policy
	if nilPolicy.IsClient(Peer{}) {
		t.Error("nil policy has a client")
	}
}
