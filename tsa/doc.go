// Package tsa is an RFC 3161 time-stamping authority that signs with any
// crypto.Signer (in signerd, a key in the HSM) and will not issue a time
// it cannot vouch for.
//
// An Issuer answers a DER TimeStampReq with a DER TimeStampResp. Every
// refusal of a request it could read is itself an RFC 3161 answer:
// PKIStatus rejection with the failInfo that says why (badAlg,
// badRequest, badDataFormat, unacceptedPolicy, unacceptedExtension,
// timeNotAvailable, systemFailure), never a bare error.
//
// Time you can trust: before each token the Issuer asks its ClockSource
// whether the clock is synchronised (on Linux, adjtimex: STA_UNSYNC clear
// and maxerror within the configured accuracy) and whether it was stepped
// since the Issuer started (the wall clock moved against the monotonic
// one by more than the accuracy). Either answer refuses with
// timeNotAvailable, unless the guard is turned off.
//
// Tokens carry the ESS signingCertificateV2 attribute, echo the
// request's nonce, and have random 160-bit serial numbers, unique across
// restarts and across several nodes without coordination. The package
// knows nothing of PKCS#11 or gRPC.
package tsa
