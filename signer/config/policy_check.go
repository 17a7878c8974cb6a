package config

import (
	"fmt"
	"strings"
)

// filePolicy is the [policy] table.
type filePolicy struct {
	Admins  fileAdmins   `toml:"admins"`
	Clients []fileClient `toml:"client"`
}

type fileAdmins struct {
	UIDs []int64 `toml:"uids"`
	GIDs []int64 `toml:"gids"`
}

type fileClient struct {
	Name    string   `toml:"name"`
	UIDs    []int64  `toml:"uids"`
	GIDs    []int64  `toml:"gids"`
	Keys    []string `toml:"keys"`
	Usages  []string `toml:"usages"`
	Members []string `toml:"members"`
}

// check checks the [policy] table into c.Policy.
func (fp *filePolicy) check(ck *checker, c *Config) {
	admins := Admins{
		UIDs: ck.ids("policy.admins.uids", fp.Admins.UIDs, "uid"),
		GIDs: ck.ids("policy.admins.gids", fp.Admins.GIDs, "gid"),
	}
	clients := make([]ClientRule, len(fp.Clients))
	for i, fcl := range fp.Clients {
		key := fmt.Sprintf("policy.client[%d]", i)
		clients[i] = ClientRule{
			Name:    fcl.Name,
			UIDs:    ck.ids(key+".uids", fcl.UIDs, "uid"),
			GIDs:    ck.ids(key+".gids", fcl.GIDs, "gid"),
			Keys:    fcl.Keys,
			Usages:  fcl.Usages,
			Members: fcl.Members,
		}
	}
	c.Policy = ck.policy(admins, clients)
}

// policy checks admins and clients and builds the policy from copies.
func (ck *checker) policy(admins Admins, clients []ClientRule) *Policy {
	p := &Policy{admins: Admins{UIDs: cloneIDs(admins.UIDs), GIDs: cloneIDs(admins.GIDs)}}
	ck.idRange("policy.admins.uids", admins.UIDs, "uid")
	ck.idRange("policy.admins.gids", admins.GIDs, "gid")
	p.adminUIDs = setOf(p.admins.UIDs)
	p.adminGIDs = setOf(p.admins.GIDs)
	names := map[string]string{}
	for i, r := range clients {
		key := fmt.Sprintf("policy.client[%d]", i)
		r = r.clone()
		if ck.checkName(key+".name", r.Name) {
			if first, dup := names[r.Name]; dup {
				ck.addf(key+".name", "%q is already the name of %s", r.Name, first)
			} else {
				names[r.Name] = key
			}
		}
		ck.idRange(key+".uids", r.UIDs, "uid")
		ck.idRange(key+".gids", r.GIDs, "gid")
		if len(r.UIDs) == 0 && len(r.GIDs) == 0 {
			ck.addf(key, "names no uids and no gids, so it matches nobody")
		}
		for j, k := range r.Keys {
			if k == Wildcard {
				continue
			}
			if problem := keyIDProblem(k); problem != "" {
				ck.addf(fmt.Sprintf("%s.keys[%d]", key, j), "%q %s", k, problem)
			}
			r.Keys[j] = strings.ToLower(k)
		}
		for j, u := range r.Usages {
			switch u {
			case UsageSign, UsageAuth, UsageTSA, UsageAudit:
			default:
				ck.addf(fmt.Sprintf("%s.usages[%d]", key, j), "%q is not one of sign, auth, tsa, audit", u)
			}
		}
		for j, m := range r.Members {
			if problem := memberProblem(m); problem != "" {
				ck.addf(fmt.Sprintf("%s.members[%d]", key, j), "%q %s", m, problem)
			}
		}
		p.rules = append(p.rules, compileRule(r))
	}
	return p
}

func cloneIDs(ids []uint32) []uint32 { return append([]uint32{}, ids...) }

// idRange checks ids built in Go (the file's are checked by ids).
func (ck *checker) idRange(key string, ids []uint32, what string) {
	for i, id := range ids {
		if id > maxID {
			ck.addf(fmt.Sprintf("%s[%d]", key, i), "%d is not a %s (0 to %d)", id, what, maxID)
		}
	}
}

// memberProblem checks a member identifier such as "EE/GOV/70000310".
func memberProblem(m string) string {
	switch {
	case m == "":
		return "is empty"
	case len(m) > 255:
		return "is longer than 255 bytes"
	case strings.ContainsFunc(m, func(r rune) bool { return r <= ' ' || r == 0x7f }):
		return "holds a space or control character"
	}
	return ""
}
