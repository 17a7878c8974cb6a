// Package config reads signerd's TOML configuration, holds the access
// policy that maps a caller (uid/gid from SO_PEERCRED) to a role and to the
// keys, usages and members it may use, the per-uid limits ([limits]: see
// Limits), and reads token PINs from their sources (a 0600 file, a
// systemd credential, or the officer's login).
//
// Parse and Load validate the whole file before they return: unknown keys
// (named with their line), bad paths, duplicate names, unknown usages and
// malformed PIN sources are all refused, and every such error wraps
// ErrInvalid. A Policy is an immutable value, safe for concurrent use, so
// that the daemon can swap it atomically when it reloads the file.
//
// The package does not import the hsm package, and builds without cgo:
// token selectors stay strings here, checked with package hsm/pkcs11uri,
// the pure-Go parser the hsm package reads them with.
//
// Each top-level table of the file is a section that validates itself next
// to its struct, as limits.go shows: the public type (Limits), the file
// type with its toml tags (fileLimits), and a method
// check(ck *checker, c *Config) that reports every problem with ck.addf
// under the table's keys ("limits.calls_per_uid") and puts the converted
// value into c. validate.go is only the driver: fileConfig.sections lists
// the sections in the order they are checked. To add a table such as
// [ocsp] or [tsa], write that one file (ocsp.go: Config field type, file
// type, defaults, check), then add the field to Config and to fileConfig,
// its entry to fileConfig.sections (TestEverySectionChecked fails until
// it is there), its defaults to defaultFile and its conversion back to
// Config.file, so that Marshal round-trips it. Keys not in the file types
// are refused as unknown, so nothing else needs a change.
package config
