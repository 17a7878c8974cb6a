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
// The package does not import the hsm package: token selectors stay strings
// here, and the package builds without cgo.
package config
