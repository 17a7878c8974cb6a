// Package state keeps signerd's persistent state in one bbolt file.
//
// The HSM is the truth for keys. The state file holds what the HSM cannot:
// a key's usage and friendly name, which member a key or certificate serves,
// certificate status and metadata, certificate signing requests, and the
// last verified OCSP response of each watched certificate, so a restart
// serves it before any fetch.
//
// Every change is committed (bbolt Update, fsync) before the call returns,
// so an admin operation that was acknowledged survives a crash. Records are
// stored as JSON, which keeps the file readable with bbolt's tools and lets
// later versions add fields. The file carries a schema version in its
// "meta" bucket; a file written by a newer, unknown schema is refused.
//
// Single-call methods on [Store] (PutKey, GetCert, ...) each run in their
// own transaction. [Store.Update] and [Store.View] hand a [Tx] with the same
// methods to a function, so that several changes (for example deleting a key
// and its certificates) commit together or not at all.
package state
