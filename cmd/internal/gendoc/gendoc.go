// Package gendoc adds to a command tree the hidden command `gen-docs DIR`,
// which writes the tree's man pages and its bash, zsh and fish completions
// into DIR, from the commands themselves (cobra's generators). The Debian
// package (cmd/internal/mkdeb) runs it on the binaries it packages, so the
// pages and completions always match the commands shipped.
package gendoc

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/cobra/doc"
)

// CommandName is the name of the hidden command.
const CommandName = "gen-docs"

// Layout of DIR: man pages in DIR/man (NAME.SECTION and one page per
// subcommand, NAME-SUB.SECTION), completions in DIR/bash/NAME,
// DIR/zsh/_NAME and DIR/fish/NAME.fish.
const (
	ManDir  = "man"
	BashDir = "bash"
	ZshDir  = "zsh"
	FishDir = "fish"
)

// ErrBadEpoch is returned (wrapped) when SOURCE_DATE_EPOCH is set but is
// not a number of seconds.
var ErrBadEpoch = errors.New("SOURCE_DATE_EPOCH is not a number of seconds")

// Command returns the hidden `gen-docs DIR` command for root, whose man
// pages go in section (1 for user commands, 8 for daemons). The pages'
// date is SOURCE_DATE_EPOCH when it is set (reproducible builds), else
// today.
func Command(root *cobra.Command, section string) *cobra.Command {
	return &cobra.Command{
		Use:    CommandName + " DIR",
		Short:  "Write the man pages and shell completions into DIR (for packaging)",
		Hidden: true,
		Args:   cobra.ExactArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return Write(root, section, args[0])
		},
	}
}

// Write writes root's man pages in section and its completions into dir.
func Write(root *cobra.Command, section, dir string) error {
	date, err := sourceDate()
	if err != nil {
		return err
	}
	for _, d := range []string{ManDir, BashDir, ZshDir, FishDir} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return fmt.Errorf("gen-docs: %w", err)
		}
	}
	root.DisableAutoGenTag = true
	header := &doc.GenManHeader{
		Title:   root.Name(),
		Section: section,
		Date:    &date,
		Source:  "hsmsigner " + root.Version,
		Manual:  "hsmsigner",
	}
	if err := doc.GenManTree(root, header, filepath.Join(dir, ManDir)); err != nil {
		return fmt.Errorf("gen-docs: man pages: %w", err)
	}
	name := root.Name()
	gens := []struct {
		path string
		gen  func(f *os.File) error
	}{
		{filepath.Join(dir, BashDir, name), func(f *os.File) error { return root.GenBashCompletionV2(f, true) }},
		{filepath.Join(dir, ZshDir, "_"+name), func(f *os.File) error { return root.GenZshCompletion(f) }},
		{filepath.Join(dir, FishDir, name+".fish"), func(f *os.File) error { return root.GenFishCompletion(f, true) }},
	}
	for _, g := range gens {
		if err := writeFile(g.path, g.gen); err != nil {
			return fmt.Errorf("gen-docs: completion: %w", err)
		}
	}
	return nil
}

func writeFile(path string, gen func(f *os.File) error) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := gen(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// sourceDate is SOURCE_DATE_EPOCH, or now.
func sourceDate() (time.Time, error) {
	s := os.Getenv("SOURCE_DATE_EPOCH")
	if s == "" {
		return time.Now().UTC(), nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("gen-docs: %w: %q", ErrBadEpoch, s)
	}
	return time.Unix(n, 0).UTC(), nil
}
