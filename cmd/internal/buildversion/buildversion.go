// Package buildversion says which version of hsmsigner a command is:
// the version given at link time (the Makefile and the Debian package
// set it from `git describe`), or else the module version or the VCS
// revision Go stamped into the binary, or "devel" for `go run`.
package buildversion

import (
	"runtime/debug"
)

// linked is set at link time:
// -ldflags "-X github.com/hsmsigner/hsmsigner/cmd/internal/buildversion.linked=v1.2.3".
var linked string

// String returns the version of the running binary.
func String() string {
	if linked != "" {
		return linked
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	return fromBuildInfo(bi)
}

// fromBuildInfo is the version bi describes.
func fromBuildInfo(bi *debug.BuildInfo) string {
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return "devel-" + rev
}
