package config

import (
	"encoding/asn1"
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Defaults for the [tsa] table.
const (
	DefaultTSAAccuracy         = time.Second
	DefaultTSAUpstreamTimeout  = 10 * time.Second
	DefaultTSAMaxBatch         = 1024
	DefaultTSAUnhealthyAfter   = 10 * time.Minute
	maxTSAAccuracy             = time.Minute
	maxTSABatchWindow          = 10 * time.Second
	maxTSAMaxBatch             = 1 << 16
	maxTSAUpstreamURLs         = 16
	maxTSAPolicies             = 32
	maxTSAUnhealthyAfter       = 7 * 24 * time.Hour
	minTSAUnhealthyAfter       = time.Second
	maxTSAUpstreamTimeoutLimit = 5 * time.Minute
)

// TSA holds the [tsa] table: the built-in RFC 3161 time-stamping
// authority, signing with a key of usage tsa, and the client of the
// external TSAs ([tsa.upstream]).
type TSA struct {
	// Enabled turns the built-in TSA on (off by default).
	Enabled bool
	// Key is the hex id of the TSA key; "" means the one key of usage
	// tsa with an active certificate.
	Key string
	// Policy is the policy OID of tokens whose request names none;
	// required when Enabled.
	Policy string
	// AcceptedPolicies are the other policies a request may ask for.
	AcceptedPolicies []string
	// Hashes are the accepted imprint algorithms: "SHA256", "SHA384",
	// "SHA512" (SHA-1 is never accepted).
	Hashes []string
	// Accuracy is claimed in each token, and is the largest clock error
	// or step the clock guard lets pass.
	Accuracy time.Duration
	// RequireSyncedClock refuses to issue (timeNotAvailable) while the
	// kernel calls the clock unsynchronised, its error exceeds Accuracy,
	// or it was stepped. On by default; signerd dev turns it off.
	RequireSyncedClock bool
	// Listen, if set, is a loopback TCP address serving POST /tsa for
	// RFC 3161 clients that speak only HTTP over TCP.
	Listen string
	// Upstream is the client of external TSAs; off without URLs.
	Upstream TSAUpstream
}

// TSAUpstream holds the [tsa.upstream] table.
type TSAUpstream struct {
	// URLs are asked in order.
	URLs []string
	// Timeout bounds one request to one TSA.
	Timeout time.Duration
	// TrustAnchors are PEM files of the CAs the TSAs' certificates chain
	// to; TSACerts PEM files of TSA certificates and intermediates for
	// tokens that do not carry them.
	TrustAnchors []string
	TSACerts     []string
	// Policy, if set, is asked of the TSAs.
	Policy string
	// BatchWindow batches requests arriving within it into one upstream
	// stamp over their Merkle root; 0 sends each alone.
	BatchWindow time.Duration
	// MaxBatch sends a batch at once when it is this large.
	MaxBatch int
	// UnhealthyAfter is how long every TSA may fail before the mode is
	// reported unhealthy.
	UnhealthyAfter time.Duration
}

// DefaultTSA returns the [tsa] defaults.
func DefaultTSA() TSA {
	return TSA{
		AcceptedPolicies:   []string{},
		Hashes:             []string{"SHA256", "SHA384", "SHA512"},
		Accuracy:           DefaultTSAAccuracy,
		RequireSyncedClock: true,
		Upstream: TSAUpstream{
			URLs: []string{}, TrustAnchors: []string{}, TSACerts: []string{},
			Timeout: DefaultTSAUpstreamTimeout, MaxBatch: DefaultTSAMaxBatch, UnhealthyAfter: DefaultTSAUnhealthyAfter,
		},
	}
}

// ParseOID reads a dotted object identifier such as "1.3.6.1.4.1.1.1".
func ParseOID(s string) (asn1.ObjectIdentifier, error) {
	parts := strings.Split(s, ".")
	if len(parts) < 2 {
		return nil, fmt.Errorf("%q is not a dotted OID", s)
	}
	oid := make(asn1.ObjectIdentifier, len(parts))
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || (i == 0 && n > 2) || p != strconv.Itoa(n) {
			return nil, fmt.Errorf("%q is not a dotted OID", s)
		}
		oid[i] = n
	}
	return oid, nil
}

type fileTSA struct {
	Enabled            bool            `toml:"enabled"`
	Key                string          `toml:"key"`
	Policy             string          `toml:"policy"`
	AcceptedPolicies   []string        `toml:"accepted_policies"`
	Hashes             []string        `toml:"hashes"`
	Accuracy           string          `toml:"accuracy"`
	RequireSyncedClock bool            `toml:"require_synced_clock"`
	Listen             string          `toml:"listen"`
	Upstream           fileTSAUpstream `toml:"upstream"`
}

type fileTSAUpstream struct {
	URLs           []string `toml:"urls"`
	Timeout        string   `toml:"timeout"`
	TrustAnchors   []string `toml:"trust_anchors"`
	TSACerts       []string `toml:"tsa_certs"`
	Policy         string   `toml:"policy"`
	BatchWindow    string   `toml:"batch_window"`
	MaxBatch       int64    `toml:"max_batch"`
	UnhealthyAfter string   `toml:"unhealthy_after"`
}

// file converts t back to the schema.
func (t TSA) file() fileTSA {
	u := t.Upstream
	return fileTSA{
		Enabled: t.Enabled, Key: t.Key, Policy: t.Policy, AcceptedPolicies: nonNil(t.AcceptedPolicies), Hashes: nonNil(t.Hashes),
		Accuracy: t.Accuracy.String(), RequireSyncedClock: t.RequireSyncedClock, Listen: t.Listen,
		Upstream: fileTSAUpstream{URLs: nonNil(u.URLs), Timeout: u.Timeout.String(), TrustAnchors: nonNil(u.TrustAnchors), TSACerts: nonNil(u.TSACerts),
			Policy: u.Policy, BatchWindow: u.BatchWindow.String(), MaxBatch: int64(u.MaxBatch), UnhealthyAfter: u.UnhealthyAfter.String()},
	}
}

// check checks the [tsa] table into c.TSA.
func (ft *fileTSA) check(ck *checker, c *Config) {
	t := TSA{Enabled: ft.Enabled, Key: strings.ToLower(ft.Key), Policy: ft.Policy, AcceptedPolicies: nonNil(ft.AcceptedPolicies),
		Hashes: nonNil(ft.Hashes), RequireSyncedClock: ft.RequireSyncedClock, Listen: ft.Listen}
	duration := func(key, v string, lo, hi time.Duration, zeroOK bool, dst *time.Duration) {
		d, err := time.ParseDuration(v)
		switch {
		case err != nil:
			ck.addf("tsa."+key, "%q is not a duration such as \"1s\"", v)
			return
		case d == 0 && zeroOK:
		case d < lo || d > hi:
			ck.addf("tsa."+key, "%q is not between %s and %s", v, lo, hi)
			return
		}
		*dst = d
	}
	oid := func(key, v string) {
		if _, err := ParseOID(v); err != nil {
			ck.addf(key, "%v", err)
		}
	}
	if t.Key != "" {
		if p := keyIDProblem(t.Key); p != "" {
			ck.addf("tsa.key", "%s", p)
		}
	}
	switch {
	case t.Policy != "":
		oid("tsa.policy", t.Policy)
	case t.Enabled:
		ck.addf("tsa.policy", "the built-in TSA needs its default policy OID")
	}
	if len(t.AcceptedPolicies) > maxTSAPolicies {
		ck.addf("tsa.accepted_policies", "%d policies, at most %d", len(t.AcceptedPolicies), maxTSAPolicies)
	}
	for i, p := range t.AcceptedPolicies {
		oid(fmt.Sprintf("tsa.accepted_policies[%d]", i), p)
	}
	if len(t.Hashes) == 0 {
		ck.addf("tsa.hashes", "name at least one of SHA256, SHA384, SHA512")
	}
	for i, h := range t.Hashes {
		switch h {
		case "SHA256", "SHA384", "SHA512":
		case "SHA1":
			ck.addf(fmt.Sprintf("tsa.hashes[%d]", i), "SHA-1 imprints are never accepted")
		default:
			ck.addf(fmt.Sprintf("tsa.hashes[%d]", i), "%q is not SHA256, SHA384 or SHA512", h)
		}
	}
	duration("accuracy", ft.Accuracy, time.Millisecond, maxTSAAccuracy, false, &t.Accuracy)
	if t.Listen != "" {
		// net/netip, not net: the package builds without cgo.
		ap, err := netip.ParseAddrPort(t.Listen)
		if err != nil || !ap.Addr().IsLoopback() || ap.Port() == 0 {
			ck.addf("tsa.listen", "%q is not a loopback address and port such as \"127.0.0.1:3180\"", t.Listen)
		}
	}
	fu := ft.Upstream
	u := TSAUpstream{URLs: nonNil(fu.URLs), TrustAnchors: nonNil(fu.TrustAnchors), TSACerts: nonNil(fu.TSACerts), Policy: fu.Policy}
	if len(u.URLs) > maxTSAUpstreamURLs {
		ck.addf("tsa.upstream.urls", "%d URLs, at most %d", len(u.URLs), maxTSAUpstreamURLs)
	}
	for i, s := range u.URLs {
		pu, err := url.Parse(s)
		if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" || pu.User != nil {
			ck.addf(fmt.Sprintf("tsa.upstream.urls[%d]", i), "%q is not an http:// or https:// URL without credentials", s)
		}
	}
	if len(u.URLs) > 0 && len(u.TrustAnchors) == 0 {
		ck.addf("tsa.upstream.trust_anchors", "the TSAs' tokens are verified against trust anchors: name at least one")
	}
	for i, p := range u.TrustAnchors {
		ck.checkPath(fmt.Sprintf("tsa.upstream.trust_anchors[%d]", i), p, false)
	}
	for i, p := range u.TSACerts {
		ck.checkPath(fmt.Sprintf("tsa.upstream.tsa_certs[%d]", i), p, false)
	}
	if u.Policy != "" {
		oid("tsa.upstream.policy", u.Policy)
	}
	duration("upstream.timeout", fu.Timeout, 100*time.Millisecond, maxTSAUpstreamTimeoutLimit, false, &u.Timeout)
	duration("upstream.batch_window", fu.BatchWindow, time.Millisecond, maxTSABatchWindow, true, &u.BatchWindow)
	duration("upstream.unhealthy_after", fu.UnhealthyAfter, minTSAUnhealthyAfter, maxTSAUnhealthyAfter, false, &u.UnhealthyAfter)
	if fu.MaxBatch < 1 || fu.MaxBatch > maxTSAMaxBatch {
		ck.addf("tsa.upstream.max_batch", "%d is not between 1 and %d", fu.MaxBatch, maxTSAMaxBatch)
	} else {
		u.MaxBatch = int(fu.MaxBatch)
	}
	t.Upstream = u
	c.TSA = t
}
