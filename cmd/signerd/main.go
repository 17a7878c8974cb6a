// Command signerd is the hsmsigner daemon: it keeps member signing keys
// inside HSMs via PKCS#11 and serves signing over local Unix sockets.
//
//	signerd --config /etc/signerd/signerd.toml   run with a configuration
//	signerd dev [--dir ./signer-dev]             run on a throwaway SoftHSM token
package main

import (
	"fmt"
	"log/slog"
	"os"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/hsmsigner/hsmsigner/cmd/internal/buildversion"
	"github.com/hsmsigner/hsmsigner/cmd/internal/gendoc"
)

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "signerd:", err)
		os.Exit(1)
	}
}

func newRootCommand() *cobra.Command {
	var configPath string
	var flags daemonFlags
	var allowRoot bool
	root := &cobra.Command{
		Use:   "signerd --config FILE",
		Short: "HSM signing daemon: signatures from keys that never leave the HSM, over local sockets",
		Long: `signerd keeps signing keys inside HSMs (through PKCS#11) and serves signatures,
certificate work, OCSP responses and time-stamps over local Unix sockets, deciding
access from the caller's kernel credentials and writing a hash-chained audit log.

Installed from the Debian package, it runs as the systemd unit signerd.service
(user signerd) with the configuration /etc/signerd/signerd.toml, its sockets in
/run/signerd, its state in /var/lib/signerd and its audit log in /var/log/signerd.
It refuses to start until the configuration's module path names your HSM's
PKCS#11 library. PKI officers manage it with signerctl(1).`,
		Version:       buildversion.String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if configPath == "" {
				return fmt.Errorf("--config is required (or run `signerd dev` to try it on a throwaway SoftHSM token)")
			}
			if os.Geteuid() == 0 && !allowRoot {
				return fmt.Errorf("signerd refuses to run as root: a daemon that holds HSM sessions should run as its own user (the packaged unit runs it as User=signerd; `systemd-sysusers` makes the user). Give --allow-root to run as root anyway")
			}
			if err := checkPrivate(configPath, "configuration"); err != nil {
				return err
			}
			if err := harden(); err != nil {
				return err
			}
			return runDaemon(cmd.Context(), configPath, flags, nil)
		},
	}
	root.Flags().StringVar(&configPath, "config", "", "path of the TOML configuration")
	root.Flags().BoolVar(&allowRoot, "allow-root", false, "run as root (refused without it; run signerd as its own user instead)")
	root.PersistentFlags().BoolVar(&flags.acceptAuditCut, "accept-audit-cut", false,
		"continue an audit log that lost lines at its end (cut, head file missing, torn last line after a crash), recording the acknowledgement; use once, after reviewing the log")
	root.AddCommand(newDevCommand(&flags), gendoc.Command(root, "8"))
	return root
}

// harden keeps secrets out of core dumps and other users' reach: no core
// files; not dumpable, so no process of the same user may read its memory
// or attach with ptrace (/proc/PID/mem and the like belong to root); no
// new privileges through exec; files created private. It runs before any
// PIN is read, whatever starts the daemon, and a step the kernel refuses
// stops the start.
func harden() error {
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		return fmt.Errorf("hardening: no core files (RLIMIT_CORE 0): %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("hardening: not dumpable (PR_SET_DUMPABLE 0): %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("hardening: no new privileges (PR_SET_NO_NEW_PRIVS): %w", err)
	}
	unix.Umask(0o077)
	return nil
}

// checkPrivate refuses a file or folder that someone other than root and
// the daemon's own user could change: writable by group or others, or
// owned by another user. what names it in the error.
func checkPrivate(path, what string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if fi.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("%s %s is writable by group or others (mode %04o): anyone who can change it can change what signerd does; chmod go-w %s", what, path, fi.Mode().Perm(), path)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s %s belongs to uid %d, neither root nor signerd's user (uid %d), who could change it", what, path, st.Uid, os.Geteuid())
	}
	return nil
}

// daemonFlags are the flags that change how the daemon starts.
type daemonFlags struct {
	acceptAuditCut bool
}

func newLogger(level slog.Level) *slog.Logger {
	return slog.New(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}
