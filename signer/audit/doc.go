// Package audit is the appliance's audit log (DESIGN.md decision 11).
//
// Every sign and admin operation, and every refusal, appends one JSON line
// to the log: time, caller uid/gid/pid, operation, token, key, digest,
// result. Each line carries the SHA-256 (lower-case hex) of the previous
// line's bytes, without its newline, in its "prev" field; the first line of
// a chain carries 64 zeros. Lines are numbered by a continuous, 1-based
// "seq". Verify and VerifyFile therefore detect any edit, removal,
// reordering or torn write, and report the first bad line with a
// VerifyError that wraps ErrTampered.
//
// A cut at the end (the last lines removed) cannot be seen in the log alone.
// So a small head file, <path>.head, holds the seq and hash of the last
// durable line: after each group commit, once the log is fsynced, a second
// goroutine writes <path>.head.tmp, fsyncs it and renames it over the head
// file. It takes only the newest request, so the head may skip groups and
// lag by a group or two; it never names a line that is not fsynced, so a
// crash cannot cause a false alarm. Options.HeadEvery spaces the updates
// out further. VerifyFile compares the log with the head file, and Open
// refuses to continue a log that ends before it, unless Options.AcceptCut
// records an officer's acknowledgement.
//
// The head file is not free. Measured on ext4 (BenchmarkAppend, 1 to 64
// callers): updated on the writer goroutine after each group it cost
// 25-70% of Sync-mode throughput (most with one caller), beside the writer
// (the default) 25-45%, and with HeadEvery at 50ms nothing beyond noise.
//
// The chain alone is not keyed: someone who can rewrite both files can
// delete a line and recompute every later hash and the head file. So the
// log is anchored by checkpoints, as a transparency log signs its tree
// heads: Log.Checkpoint signs a Statement (a fixed four-line text naming
// the seq and hash of a durable line, and the time) with an audit key in
// the HSM and appends it, with its signature, as a line of its own (Op
// OpCheckpoint), itself part of the chain. VerifyWith and VerifyFileWith,
// given the audit key's public key, check every checkpoint's signature and
// that the line it names has the hash it states; a rewritten history
// fails unless the rewriter holds the audit key. Lines after the last
// checkpoint (Summary.AnchoredSeq) are not anchored. Checkpoints shipped
// off the machine (VerifyOptions.Anchors) also catch a rewrite that drops
// the checkpoint lines, and a cut at the end. Without keys, statements are
// still checked against the chain, signatures are not. Verification needs
// only the public key, never the HSM.
//
// Every string field is bounded (MaxDetailLen and its siblings): a longer
// value, such as a 40 KiB digest a caller sent, is written as its SHA-256
// and length, "sha256:<hex> len=<n>" (FieldHash), never dropped, so that
// a refusal is recorded whatever the caller sent.
//
// Records are committed in groups: one writer goroutine takes every record
// waiting, up to Options.MaxBatch, and writes them with one write(2) and
// one fsync, then wakes all their callers, so signing does not wait on one
// fsync per signature. In Sync mode Append returns once its group is
// fsynced; in Buffered mode once it is written, with an fsync (on the
// second goroutine, so writing goes on meanwhile) at most every
// Options.FlushEvery and at Close.
//
// A Log holds an exclusive flock(2) on its file: one writer per log.
package audit
