// Package ocsp keeps a fresh, verified OCSP response for every certificate
// it is given to watch: it fetches responses from the certificate's
// responders, verifies each one before it is cached, refreshes it well
// before it goes stale, and keeps the last good response in service while
// it is fresh, whatever the responders do meanwhile.
//
// The package knows nothing of the signing service. It reads the
// certificates to watch, each with its issuer, from a Source, keeps its
// responses in a Store, and is told when the set of certificates changes
// (Watcher.Resync). The service hands it those; tests hand it httptest
// responders and an in-memory store.
//
// A response is usable when Verify accepts it: its CertID names the
// certificate and its issuer, it is signed by the issuer or by a responder
// the issuer delegated with id-kp-OCSPSigning (or one configured as
// trusted), thisUpdate is neither in the future beyond the allowed clock
// skew nor older than the freshness window, nextUpdate (when present) has
// not passed, and the nonce matches when one was sent. Each refusal is a
// *RejectError naming the check that failed.
//
// Refresh follows the freshness rule: a certificate is refreshed at the
// earlier of half its response's validity (thisUpdate to nextUpdate) and
// half the freshness window, with jitter, so a response is replaced long
// before a relying party would call it too old.
package ocsp
