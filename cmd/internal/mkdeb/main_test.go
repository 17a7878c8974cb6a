package main

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestDebianVersion(t *testing.T) {
	cases := []struct {
		describe string
		commits  int
		want     string
		err      error
	}{
		{"v1.2.3", 0, "1.2.3", nil},
		{"1.2.3", 0, "1.2.3", nil},
		{"v1.2.3-dirty", 0, "1.2.3+dirty", nil},
		{"v1.2.3-4-gabc1234", 0, "1.2.3+4.gabc1234", nil},
		{"v1.2.3-4-gabc1234-dirty", 0, "1.2.3+4.gabc1234.dirty", nil},
		{"v2.0.0~rc1-1-g0123456", 0, "2.0.0~rc1+1.g0123456", nil},
		{"03a0467", 213, "0.0.0+git213.g03a0467", nil},
		{"abcdef1-dirty", 7, "0.0.0+git7.gabcdef1.dirty", nil},
		{"release-one", 0, "", errBadDescribe},
		{"v1.2.3 extra", 0, "", errBadDescribe},
		{"", 0, "", errBadDescribe},
	}
	for _, c := range cases {
		t.Run(c.describe, func(t *testing.T) {
			got, err := debianVersion(c.describe, c.commits)
			if c.err != nil {
				if !errors.Is(err, c.err) {
					t.Fatalf("got %q, %v; want %v", got, err, c.err)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("got %q, %v; want %q", got, err, c.want)
			}
			if tagged(c.describe) == strings.HasPrefix(c.want, "0.0.0+git") {
				t.Errorf("tagged(%q) = %v", c.describe, tagged(c.describe))
			}
		})
	}
}

func TestCompareVersions(t *testing.T) {
	cases := []struct {
		a, b string
		sign int
	}{
		{"2.34", "2.3", 1},
		{"2.3", "2.34", -1},
		{"2.17", "2.17", 0},
		{"2.3.4", "2.3", 1},
		{"", "2.2.5", -1},
	}
	for _, c := range cases {
		got := compareVersions(c.a, c.b)
		if (got > 0) != (c.sign > 0) || (got < 0) != (c.sign < 0) {
			t.Errorf("compareVersions(%q, %q) = %d, want sign %d", c.a, c.b, got, c.sign)
		}
	}
}

// TestCopyrightNamesLinkedModules: every module signerd and signerctl
// link has its paragraph in systemd/deb/copyright (else `make deb`
// refuses to build).
func TestCopyrightNamesLinkedModules(t *testing.T) {
	copyright, err := os.ReadFile("../../../" + copyrightPath)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(t.Context(), "go", "list", "-deps", "-f", "{{with .Module}}{{.Path}}{{end}}",
		modulePath+"/cmd/signerd", modulePath+"/cmd/signerctl").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	for _, m := range strings.Fields(string(out)) {
		if m != modulePath && !strings.Contains(string(copyright), "go-modules/"+m+"/*") {
			t.Errorf("%s links %s; give it a Files: go-modules/%s/* paragraph", copyrightPath, m, m)
		}
	}
}

// TestCheckCopyright: a binary linking a module the copyright file does
// not name is refused, naming the module (this test binary links nfpm).
func TestCheckCopyright(t *testing.T) {
	bin, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	err = checkCopyright([]string{bin}, "Files: go-modules/std/*\n")
	if !errors.Is(err, errUnlicensed) || !strings.Contains(err.Error(), "github.com/goreleaser/nfpm/v2") {
		t.Fatalf("got %v, want errUnlicensed naming github.com/goreleaser/nfpm/v2", err)
	}
}

// TestGlibcNeeded: ls, linked with glibc on Debian, needs some GLIBC_2.x.
func TestGlibcNeeded(t *testing.T) {
	bin, err := exec.LookPath("ls")
	if err != nil {
		t.Fatal(err)
	}
	v, err := glibcNeeded(bin)
	if err != nil || !strings.HasPrefix(v, "2.") {
		t.Fatalf("glibcNeeded: %q, %v", v, err)
	}
}
