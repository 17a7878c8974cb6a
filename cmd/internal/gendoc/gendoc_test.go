package gendoc

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

// TestWrite: gen-docs writes a man page per visible command in the
// section given, dated SOURCE_DATE_EPOCH, without cobra's generated-by
// tag and without the hidden command, and the three completions.
func TestWrite(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "1767225600") // 2026-01-01
	root := &cobra.Command{Use: "tool", Short: "a tool", Version: "1.2.3"}
	root.AddCommand(&cobra.Command{Use: "sub", Short: "a subcommand", Run: func(*cobra.Command, []string) {}})
	root.AddCommand(Command(root, "8"))
	dir := t.TempDir()
	root.SetArgs([]string{CommandName, dir})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"man/tool.8", "man/tool-sub.8", "bash/tool", "zsh/_tool", "fish/tool.fish"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("missing %s: %v", f, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "man", "tool-"+CommandName+".8")); err == nil {
		t.Errorf("the hidden %s command has a man page", CommandName)
	}
	page, err := os.ReadFile(filepath.Join(dir, "man", "tool.8"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`.TH "tool" "8" "Jan 2026" "hsmsigner 1.2.3" "hsmsigner"`} {
		if !strings.Contains(string(page), want) {
			t.Errorf("tool.8 lacks %q:\n%s", want, page)
		}
	}
	if strings.Contains(string(page), "Auto generated") {
		t.Errorf("tool.8 has cobra's generated-by tag:\n%s", page)
	}
}

// TestWriteBadEpoch: a SOURCE_DATE_EPOCH that is not a number is refused.
func TestWriteBadEpoch(t *testing.T) {
	t.Setenv("SOURCE_DATE_EPOCH", "yesterday")
	root := &cobra.Command{Use: "tool"}
	if err := Write(root, "1", t.TempDir()); !errors.Is(err, ErrBadEpoch) {
		t.Fatalf("got %v, want %v", err, ErrBadEpoch)
	}
}
