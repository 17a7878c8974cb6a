package config

import (
	"fmt"
	"net/url"
	"time"
)

// Defaults for the [ocsp] table, used for every key the file leaves out.
// They are the ocsp package's own defaults; this package does not import
// it, to build without cgo (net/http would bring it in).
const (
	DefaultOCSPFreshness       = time.Hour
	DefaultOCSPMaxSkew         = 5 * time.Minute
	DefaultOCSPMaxInFlight     = 8
	DefaultOCSPConnectTimeout  = 5 * time.Second
	DefaultOCSPReadTimeout     = 10 * time.Second
	DefaultOCSPMaxResponseSize = 64 << 10
	// OCSPRetryMax is the longest backoff between two failed refreshes;
	// a quarter of the freshness window when that is shorter.
	OCSPRetryMax = 5 * time.Minute
)

// Bounds of the [ocsp] values.
const (
	minOCSPFreshness       = 2 * time.Minute
	maxOCSPFreshness       = 7 * 24 * time.Hour
	maxOCSPMaxSkew         = time.Hour
	minOCSPRefresh         = 30 * time.Second
	maxOCSPInFlight        = 1024
	maxOCSPTimeout         = 5 * time.Minute
	minOCSPMaxResponseSize = 1 << 10
	maxOCSPMaxResponseSize = 1 << 20
	maxOCSPURLs            = 16
)

// OCSP holds the [ocsp] table: how signerd keeps a fresh, verified OCSP
// response for every active sign and auth certificate (and the
// intermediates of their chains), and how fresh a response must be for
// the certificate to be offered.
type OCSP struct {
	// Enabled turns OCSP on (the default). Off, GetSigningInfo offers
	// certificates with no revocation status at all and the OCSP calls
	// are refused.
	Enabled bool
	// Freshness is the largest age (now - thisUpdate) of a response that
	// is served; X-Road's default is 3,600 s.
	Freshness time.Duration
	// MaxSkew is how far in the future a response's thisUpdate may lie.
	MaxSkew time.Duration
	// RefreshInterval, if not 0, caps the time between two fetches for a
	// certificate; it must be shorter than Freshness. 0: the earlier of
	// half the response's validity and half Freshness.
	RefreshInterval time.Duration
	// MaxInFlight bounds the OCSP requests in flight at once.
	MaxInFlight int
	// ConnectTimeout and ReadTimeout bound one request to a responder.
	ConnectTimeout, ReadTimeout time.Duration
	// MaxResponseSize is the largest response read, in bytes.
	MaxResponseSize int
	// IssuerCerts are PEM files of issuing CA certificates, for
	// certificates imported without their chain.
	IssuerCerts []string
	// TrustedResponders are PEM files of responder certificates trusted
	// to sign responses for any certificate, besides each issuer and the
	// responders it delegated.
	TrustedResponders []string
	// Responders replace the certificates' AIA OCSP URLs, per issuer.
	Responders []OCSPResponders
}

// OCSPResponders is one [[ocsp.responders]] entry: the responders to ask,
// in order, for the certificates one issuer issued.
type OCSPResponders struct {
	// Issuer is the PEM file of the issuing CA certificate.
	Issuer string
	// URLs are asked in order until one gives a valid response.
	URLs []string
	// Method is OCSPMethodPOST (the default) or OCSPMethodGET (RFC 5019).
	Method string
	// Nonce sends a nonce and requires it back.
	Nonce bool
}

// The methods of asking a responder.
const (
	OCSPMethodPOST = "POST"
	OCSPMethodGET  = "GET"
)

// DefaultOCSP returns the [ocsp] defaults.
func DefaultOCSP() OCSP {
	return OCSP{
		Enabled:         true,
		Freshness:       DefaultOCSPFreshness,
		MaxSkew:         DefaultOCSPMaxSkew,
		MaxInFlight:     DefaultOCSPMaxInFlight,
		ConnectTimeout:  DefaultOCSPConnectTimeout,
		ReadTimeout:     DefaultOCSPReadTimeout,
		MaxResponseSize: DefaultOCSPMaxResponseSize,

		IssuerCerts:       []string{},
		TrustedResponders: []string{},
	}
}

// RetryMax is the longest backoff between two failed refreshes: at most
// a quarter of the freshness window, so a failing responder leaves time
// for several more tries before a response goes stale.
func (o OCSP) RetryMax() time.Duration { return min(OCSPRetryMax, o.Freshness/4) }

// fileOCSP is the [ocsp] table as written in the file.
type fileOCSP struct {
	Enabled           bool                 `toml:"enabled"`
	Freshness         string               `toml:"freshness"`
	MaxSkew           string               `toml:"max_skew"`
	RefreshInterval   string               `toml:"refresh_interval"`
	MaxInFlight       int64                `toml:"max_in_flight"`
	ConnectTimeout    string               `toml:"connect_timeout"`
	ReadTimeout       string               `toml:"read_timeout"`
	MaxResponseSize   int64                `toml:"max_response_size"`
	IssuerCerts       []string             `toml:"issuer_certs"`
	TrustedResponders []string             `toml:"trusted_responders"`
	Responders        []fileOCSPResponders `toml:"responders"`
}

type fileOCSPResponders struct {
	Issuer string   `toml:"issuer"`
	URLs   []string `toml:"urls"`
	Method string   `toml:"method"`
	Nonce  bool     `toml:"nonce"`
}

// file converts o back to the schema.
func (o OCSP) file() fileOCSP {
	fo := fileOCSP{
		Enabled: o.Enabled, Freshness: o.Freshness.String(), MaxSkew: o.MaxSkew.String(),
		RefreshInterval: o.RefreshInterval.String(), MaxInFlight: int64(o.MaxInFlight),
		ConnectTimeout: o.ConnectTimeout.String(), ReadTimeout: o.ReadTimeout.String(),
		MaxResponseSize: int64(o.MaxResponseSize), IssuerCerts: nonNil(o.IssuerCerts), TrustedResponders: nonNil(o.TrustedResponders),
	}
	for _, r := range o.Responders {
		fo.Responders = append(fo.Responders, fileOCSPResponders{Issuer: r.Issuer, URLs: nonNil(r.URLs), Method: r.Method, Nonce: r.Nonce})
	}
	return fo
}

// check checks the [ocsp] table into c.OCSP.
func (fo *fileOCSP) check(ck *checker, c *Config) {
	o := OCSP{Enabled: fo.Enabled, IssuerCerts: nonNil(fo.IssuerCerts), TrustedResponders: nonNil(fo.TrustedResponders)}
	duration := func(key, v string, lo, hi time.Duration, zeroOK bool, dst *time.Duration) bool {
		d, err := time.ParseDuration(v)
		switch {
		case err != nil:
			ck.addf("ocsp."+key, "%q is not a duration such as \"1h\"", v)
			return false
		case d == 0 && zeroOK:
		case d < lo || d > hi:
			ck.addf("ocsp."+key, "%q is not between %s and %s", v, lo, hi)
			return false
		}
		*dst = d
		return true
	}
	count := func(key string, v, lo, hi int64, dst *int) {
		if v < lo || v > hi {
			ck.addf("ocsp."+key, "%d is not between %d and %d", v, lo, hi)
			return
		}
		*dst = int(v)
	}
	freshOK := duration("freshness", fo.Freshness, minOCSPFreshness, maxOCSPFreshness, false, &o.Freshness)
	duration("max_skew", fo.MaxSkew, 0, maxOCSPMaxSkew, true, &o.MaxSkew)
	refreshOK := duration("refresh_interval", fo.RefreshInterval, minOCSPRefresh, maxOCSPFreshness, true, &o.RefreshInterval)
	duration("connect_timeout", fo.ConnectTimeout, 100*time.Millisecond, maxOCSPTimeout, false, &o.ConnectTimeout)
	duration("read_timeout", fo.ReadTimeout, 100*time.Millisecond, maxOCSPTimeout, false, &o.ReadTimeout)
	count("max_in_flight", fo.MaxInFlight, 1, maxOCSPInFlight, &o.MaxInFlight)
	count("max_response_size", fo.MaxResponseSize, minOCSPMaxResponseSize, maxOCSPMaxResponseSize, &o.MaxResponseSize)
	if freshOK && refreshOK && o.RefreshInterval >= o.Freshness {
		ck.addf("ocsp.refresh_interval", "%s is not shorter than freshness %s: a response could go stale before it is refreshed", o.RefreshInterval, o.Freshness)
	}
	for i, p := range o.IssuerCerts {
		ck.checkPath(fmt.Sprintf("ocsp.issuer_certs[%d]", i), p, false)
	}
	for i, p := range o.TrustedResponders {
		ck.checkPath(fmt.Sprintf("ocsp.trusted_responders[%d]", i), p, false)
	}
	for i, fr := range fo.Responders {
		key := fmt.Sprintf("ocsp.responders[%d]", i)
		r := OCSPResponders{Issuer: fr.Issuer, URLs: nonNil(fr.URLs), Method: fr.Method, Nonce: fr.Nonce}
		ck.checkPath(key+".issuer", r.Issuer, false)
		switch r.Method {
		case "":
			r.Method = OCSPMethodPOST
		case OCSPMethodPOST, OCSPMethodGET:
		default:
			ck.addf(key+".method", "%q is neither \"POST\" nor \"GET\"", r.Method)
		}
		if len(r.URLs) == 0 || len(r.URLs) > maxOCSPURLs {
			ck.addf(key+".urls", "give 1 to %d responder URLs", maxOCSPURLs)
		}
		for j, u := range r.URLs {
			pu, err := url.Parse(u)
			if err != nil || (pu.Scheme != "http" && pu.Scheme != "https") || pu.Host == "" || pu.User != nil {
				ck.addf(fmt.Sprintf("%s.urls[%d]", key, j), "%q is not an http:// or https:// URL without credentials", u)
			}
		}
		o.Responders = append(o.Responders, r)
	}
	c.OCSP = o
}
