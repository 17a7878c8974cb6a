// Package signer is the appliance's service: the registry of modules,
// tokens and keys, the access policy applied to every call from the
// caller's socket credentials, signing and batch signing, the state kept in
// bbolt and the hash-chained audit log. It implements the signer.v1 gRPC
// API; cmd/signerd wires it to sockets and signals.
package signer
