// Command mkdeb builds the Debian package hsmsigner_VERSION_ARCH.deb from
// a checkout of hsmsigner (`make deb` runs it with `go run`). It builds
// signerd and signerctl with the package's version linked in, has each
// write its man pages and shell completions (their hidden gen-docs
// command), and packs them with the units, the sysusers.d and tmpfiles.d
// files, the configuration (a conffile that signerd refuses until it is
// edited), the maintainer scripts and the documentation, through nfpm used
// as a library.
//
//	go run ./cmd/internal/mkdeb --describe "$(git describe --tags --always --dirty)" --out .
package main

import (
	"bytes"
	"compress/gzip"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	"github.com/goreleaser/nfpm/v2/deb"
	"github.com/goreleaser/nfpm/v2/files"
)

// modulePath is the module mkdeb packages; it must be run from its root.
const modulePath = "github.com/hsmsigner/hsmsigner"

// versionVar is the variable the version is linked into.
const versionVar = modulePath + "/cmd/internal/buildversion.linked"

// packageName is the Debian package's name.
const packageName = "hsmsigner"

// copyrightPath is the Debian copyright file, in the source tree.
const copyrightPath = "systemd/deb/copyright"

func main() {
	if err := run(context.Background(), os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkdeb:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fl := flag.NewFlagSet("mkdeb", flag.ContinueOnError)
	describe := fl.String("describe", "", "output of `git describe --tags --always --dirty` (default: run it)")
	out := fl.String("out", ".", "folder to write the package into")
	maintainer := fl.String("maintainer", "hsmsigner maintainers <hsmsigner@users.noreply.github.com>", "the package's Maintainer field")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if err := checkModuleRoot(); err != nil {
		return err
	}
	if *describe == "" {
		d, err := git(ctx, "describe", "--tags", "--always", "--dirty")
		if err != nil {
			return fmt.Errorf("no --describe given and %w", err)
		}
		*describe = d
	}
	var commits int
	if !tagged(*describe) {
		n, err := git(ctx, "rev-list", "--count", "HEAD")
		if err != nil {
			return err
		}
		if commits, err = strconv.Atoi(n); err != nil {
			return fmt.Errorf("git rev-list --count: %q: %w", n, err)
		}
	}
	version, err := debianVersion(*describe, commits)
	if err != nil {
		return err
	}
	date, err := sourceDate(ctx)
	if err != nil {
		return err
	}
	work, err := os.MkdirTemp("", "mkdeb-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	p, err := build(ctx, work, version, date, *maintainer)
	if err != nil {
		return err
	}
	return p.write(*out)
}

// checkModuleRoot refuses to run anywhere but the root of the module.
func checkModuleRoot() error {
	data, err := os.ReadFile("go.mod")
	if err != nil || !bytes.HasPrefix(data, []byte("module "+modulePath+"\n")) {
		return fmt.Errorf("run mkdeb from the root of the %s checkout (make deb)", modulePath)
	}
	return nil
}

// git runs git with args and returns its output, trimmed.
func git(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "git", args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(ee.Stderr))
		}
		return "", fmt.Errorf("git %s: %w", strings.Join(args, " "), err)
	}
	return strings.TrimSpace(string(out)), nil
}

// describeRE is a `git describe --tags --always --dirty` from a tag: the
// tag, then, past it, the count of commits and the abbreviated hash.
var describeRE = regexp.MustCompile(`^v?([0-9][0-9A-Za-z.+~]*)(?:-([0-9]+)-g([0-9a-f]+))?(-dirty)?$`)

// hashRE is a `git describe --always --dirty` with no tag: the hash.
var hashRE = regexp.MustCompile(`^([0-9a-f]{4,40})(-dirty)?$`)

// tagged reports whether describe starts from a tag. A describe of hex
// digits alone is a commit hash (git describe --always found no tag):
// tags are named like v1.2.3.
func tagged(describe string) bool {
	return !hashRE.MatchString(describe) && describeRE.MatchString(describe)
}

// errBadDescribe is returned (wrapped) for a describe output mkdeb cannot
// turn into a Debian version.
var errBadDescribe = errors.New("not the output of git describe --tags --always --dirty")

// debianVersion turns describe into the package's version, which is also
// the version signerd and signerctl print: v1.2.3 is 1.2.3; 4 commits past
// it, 1.2.3+4.gabc1234; with no tag, 0.0.0+git<commits>.gabc1234 (commits
// counts the history, so later builds sort later); a dirty tree adds
// ".dirty" (after "+", or "+dirty").
func debianVersion(describe string, commits int) (string, error) {
	var v string
	dirty := false
	if m := hashRE.FindStringSubmatch(describe); m != nil {
		if commits <= 0 {
			return "", fmt.Errorf("%q has no tag and the commit count is %d", describe, commits)
		}
		v = fmt.Sprintf("0.0.0+git%d.g%s", commits, m[1])
		dirty = m[2] != ""
	} else if m := describeRE.FindStringSubmatch(describe); m != nil {
		v = m[1]
		if m[2] != "" {
			v += "+" + m[2] + ".g" + m[3]
		}
		dirty = m[4] != ""
	} else {
		return "", fmt.Errorf("%q: %w", describe, errBadDescribe)
	}
	if dirty {
		if strings.Contains(v, "+") {
			v += ".dirty"
		} else {
			v += "+dirty"
		}
	}
	return v, nil
}

// sourceDate is SOURCE_DATE_EPOCH when set, else the last commit's time:
// the packaged files' times and the man pages' date, so that the same
// commit gives the same package.
func sourceDate(ctx context.Context) (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		var err error
		if s, err = git(ctx, "log", "-1", "--format=%ct"); err != nil {
			return time.Time{}, err
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("source date %q: %w", s, err)
	}
	return time.Unix(n, 0).UTC(), nil
}

// pkg is a package ready to be written.
type pkg struct {
	info *nfpm.Info
}

// binary is one packaged command.
type binary struct {
	name    string // command name
	section string // man section
}

var binaries = []binary{{"signerd", "8"}, {"signerctl", "1"}}

// build builds the binaries and every generated file into work and
// returns the package's description.
func build(ctx context.Context, work, version string, date time.Time, maintainer string) (*pkg, error) {
	var contents files.Contents
	add := func(src, dst string, mode os.FileMode) {
		contents = append(contents, &files.Content{Source: src, Destination: dst, FileInfo: &files.ContentFileInfo{Mode: mode, Owner: "root", Group: "root"}})
	}
	var glibc string
	var bins []string
	for _, b := range binaries {
		bin := filepath.Join(work, b.name)
		if err := goBuild(ctx, bin, "./cmd/"+b.name, version); err != nil {
			return nil, err
		}
		bins = append(bins, bin)
		v, err := glibcNeeded(bin)
		if err != nil {
			return nil, err
		}
		if compareVersions(v, glibc) > 0 {
			glibc = v
		}
		add(bin, "/usr/bin/"+b.name, 0o755)

		docs := filepath.Join(work, "docs-"+b.name)
		cmd := exec.CommandContext(ctx, bin, "gen-docs", docs)
		cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH="+strconv.FormatInt(date.Unix(), 10))
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("%s gen-docs: %w\n%s", b.name, err, out)
		}
		pages, err := filepath.Glob(filepath.Join(docs, "man", "*."+b.section))
		if err != nil || len(pages) == 0 {
			return nil, fmt.Errorf("%s gen-docs wrote no man page in section %s", b.name, b.section)
		}
		for _, page := range pages {
			if err := gzipFile(page, page+".gz"); err != nil {
				return nil, err
			}
			add(page+".gz", "/usr/share/man/man"+b.section+"/"+filepath.Base(page)+".gz", 0o644)
		}
		add(filepath.Join(docs, "bash", b.name), "/usr/share/bash-completion/completions/"+b.name, 0o644)
		add(filepath.Join(docs, "zsh", "_"+b.name), "/usr/share/zsh/vendor-completions/_"+b.name, 0o644)
		add(filepath.Join(docs, "fish", b.name+".fish"), "/usr/share/fish/vendor_completions.d/"+b.name+".fish", 0o644)
	}
	if glibc == "" {
		return nil, errors.New("the binaries link no glibc symbol: were they built with cgo?")
	}
	copyright, err := os.ReadFile(copyrightPath)
	if err != nil {
		return nil, err
	}
	if err := checkCopyright(bins, string(copyright)); err != nil {
		return nil, err
	}

	for _, u := range []string{"signerd.service", "signerd-grpc.socket", "signerd-http.socket"} {
		add(filepath.Join("systemd", u), "/usr/lib/systemd/system/"+u, 0o644)
	}
	add("systemd/sysusers.d-signerd.conf", "/usr/lib/sysusers.d/signerd.conf", 0o644)
	add("systemd/tmpfiles.d-signerd.conf", "/usr/lib/tmpfiles.d/signerd.conf", 0o644)
	// The configuration and its folder are root:root here; the postinst
	// gives them to group signerd (dpkg-statoverride), which does not
	// exist before it runs.
	contents = append(contents,
		&files.Content{Destination: "/etc/signerd", Type: files.TypeDir, FileInfo: &files.ContentFileInfo{Mode: 0o750, Owner: "root", Group: "root"}},
		&files.Content{Source: "systemd/signerd.toml", Destination: "/etc/signerd/signerd.toml", Type: files.TypeConfig,
			FileInfo: &files.ContentFileInfo{Mode: 0o640, Owner: "root", Group: "root"}})

	const doc = "/usr/share/doc/" + packageName + "/"
	add(copyrightPath, doc+"copyright", 0o644)
	add("systemd/deb/lintian-overrides", "/usr/share/lintian/overrides/"+packageName, 0o644)
	readme := filepath.Join(work, "README.md.gz")
	if err := gzipFile("README.md", readme); err != nil {
		return nil, err
	}
	add(readme, doc+"README.md.gz", 0o644)
	changelog := filepath.Join(work, "changelog")
	if err := os.WriteFile(changelog, []byte(changelogText(version, maintainer, date)), 0o644); err != nil {
		return nil, err
	}
	if err := gzipFile(changelog, changelog+".gz"); err != nil {
		return nil, err
	}
	add(changelog+".gz", doc+"changelog.gz", 0o644)

	info := &nfpm.Info{
		Name:          packageName,
		Arch:          runtime.GOARCH,
		Platform:      "linux",
		Version:       version,
		VersionSchema: "none",
		Section:       "admin",
		Priority:      "optional",
		Maintainer:    maintainer,
		Homepage:      "https://github.com/hsmsigner/hsmsigner",
		License:       "Apache-2.0",
		MTime:         date,
		Description: `signing daemon whose keys stay in the HSM (PKCS#11)
signerd keeps member signing keys inside HSMs, through PKCS#11, and serves
signatures, certificate requests, OCSP responses and RFC 3161 time-stamps
over local Unix sockets (and X-Road's signer protocol on loopback TCP),
deciding access from the caller's kernel credentials and writing a
hash-chained audit log. signerctl is the PKI officer's command line tool.
.
The package installs a sandboxed systemd unit but never starts it: edit
/etc/signerd/signerd.toml first.`,
		Overridables: nfpm.Overridables{
			Depends:  []string{"libc6 (>= " + glibc + ")", "systemd"},
			Suggests: []string{"softhsm2", "opensc"},
			Contents: contents,
			Scripts: nfpm.Scripts{
				PostInstall: "systemd/deb/postinst",
				PreRemove:   "systemd/deb/prerm",
				PostRemove:  "systemd/deb/postrm",
			},
			Deb: nfpm.Deb{Compression: "xz"},
		},
	}
	info = nfpm.WithDefaults(info)
	if err := info.Validate(); err != nil {
		return nil, fmt.Errorf("nfpm: %w", err)
	}
	return &pkg{info: info}, nil
}

// write writes the package into dir under its conventional name.
func (p *pkg) write(dir string) error {
	path := filepath.Join(dir, deb.Default.ConventionalFileName(p.info))
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := deb.Default.Package(p.info, f); err != nil {
		f.Close()
		os.Remove(path)
		return fmt.Errorf("nfpm: %w", err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	fmt.Println(path)
	return nil
}

// goBuild builds pkg into out as the package ships it: cgo (PKCS#11),
// position-independent with full RELRO, fortified C, no symbols, no build
// paths (so `signerd dev` knows it is away from a checkout), the version
// linked in.
func goBuild(ctx context.Context, out, pkg, version string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildmode=pie",
		"-ldflags=-s -w -X "+versionVar+"="+version+" -extldflags=-Wl,-z,relro,-z,now",
		"-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=1",
		"CGO_CFLAGS=-O2 -g -D_FORTIFY_SOURCE=2 -fstack-protector-strong",
		"CGO_CPPFLAGS=", "CGO_LDFLAGS=-Wl,-z,relro,-z,now")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, b)
	}
	return nil
}

// glibcNeeded returns the highest GLIBC_x.y symbol version bin imports:
// the libc6 version the package depends on.
func glibcNeeded(bin string) (string, error) {
	f, err := elf.Open(bin)
	if err != nil {
		return "", err
	}
	defer f.Close()
	syms, err := f.ImportedSymbols()
	if err != nil {
		return "", fmt.Errorf("%s: %w", bin, err)
	}
	best := ""
	for _, s := range syms {
		v, ok := strings.CutPrefix(s.Version, "GLIBC_")
		if ok && compareVersions(v, best) > 0 {
			best = v
		}
	}
	return best, nil
}

// compareVersions compares dotted numeric versions ("" is the lowest).
func compareVersions(a, b string) int {
	if a == "" || b == "" {
		return strings.Compare(a, b)
	}
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := range max(len(pa), len(pb)) {
		var x, y int
		if i < len(pa) {
			x, _ = strconv.Atoi(pa[i])
		}
		if i < len(pb) {
			y, _ = strconv.Atoi(pb[i])
		}
		if x != y {
			return x - y
		}
	}
	return 0
}

// errUnlicensed is returned (wrapped) when a binary links a module the
// copyright file does not name.
var errUnlicensed = errors.New("links modules the copyright file does not name")

// checkCopyright refuses binaries that link a Go module copyright has no
// go-modules/ paragraph for.
func checkCopyright(bins []string, copyright string) error {
	var missing []string
	for _, bin := range bins {
		bi, err := buildinfo.ReadFile(bin)
		if err != nil {
			return fmt.Errorf("%s: %w", bin, err)
		}
		for _, d := range bi.Deps {
			if !strings.Contains(copyright, "go-modules/"+d.Path+"/*") && !slices.Contains(missing, d.Path) {
				missing = append(missing, d.Path)
			}
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%s: %w: %s (add a Files: go-modules/MODULE/* paragraph with its copyright and licence)", copyrightPath, errUnlicensed, strings.Join(missing, ", "))
	}
	return nil
}

// changelogText is the package's Debian changelog: one entry for the build.
func changelogText(version, maintainer string, date time.Time) string {
	return fmt.Sprintf("%s (%s) unstable; urgency=medium\n\n  * Built from the hsmsigner repository with make deb.\n\n -- %s  %s\n",
		packageName, version, maintainer, date.Format(time.RFC1123Z))
}

// gzipFile compresses src into dst as gzip -9n does: no name, no time.
func gzipFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if err != nil {
		return err
	}
	if _, err := zw.Write(data); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(dst, buf.Bytes(), 0o644)
}
