// Package signer is the appliance's service: the registry of modules,
// tokens and keys, the access policy applied to every call from the
// caller's socket credentials, signing and batch signing, the state kept in
// bbolt and the hash-chained audit log. It implements the signer.v1 gRPC
// API; cmd/signerd wires it to sockets and signals.
//
// # Where a new feature plugs in
//
// A feature that runs inside signerd (a time-stamping authority, an
// X-Road listener) is a package of its own, wired in cmd/signerd; it
// declares, in its own package, the small interfaces it consumes, and
// *Service satisfies them:
//
//   - Service.KeySigner returns an audited crypto.Signer for a key of a
//     given usage (sign, auth or tsa; never the audit key): each
//     signature goes through the token's session pool, checks the key's
//     usage (and, for an Actor with a peer, the access policy; an Actor
//     without one gets no key that serves a member), is verified as a
//     Sign call's is and with the signer's Public, and is returned only
//     after its audit line (op Actor.Op) is written.
//   - Service.CertificatesOf returns the active, valid, unrevoked
//     certificates of keys of a usage, with their chains, newest first;
//     Service.OnCertificatesChanged tells a feature, on a goroutine of
//     its own, when they change (the changing call waits at most a few
//     seconds for it; a panic is logged).
//   - OCSP responses are kept through the ocsp.Source and ocsp.Store the
//     service gives package ocsp (see ocsp.go).
//
// Nothing in this package names a feature. seam_test.go shows a
// throwaway feature built outside the package against these entry points.
package signer
