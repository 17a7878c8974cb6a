package main

import (
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/client"
)

func (a *app) tokenCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "token", Short: "List tokens, log in and out, change the PIN (admin)"}
	list := &cobra.Command{
		Use: "list", Short: "List the configured tokens", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				resp, err := c.ListTokens(ctx, &signerv1.ListTokensRequest{})
				if err != nil {
					return err
				}
				if a.output == "json" {
					return a.printJSON(resp)
				}
				return a.tokenTable(resp.GetTokens())
			})
		},
	}
	var pinFile string
	login := &cobra.Command{
		Use: "login TOKEN", Short: "Log a token in; the PIN is read from the terminal without echo, or from --pin-file", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pin, err := a.readPIN(pinFile, "User PIN for token "+args[0]+": ")
			if err != nil {
				return err
			}
			defer clear(pin)
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				t, err := c.LoginToken(ctx, &signerv1.LoginTokenRequest{Token: args[0], Pin: pin})
				if err != nil {
					return err
				}
				return a.printToken(t)
			})
		},
	}
	login.Flags().StringVar(&pinFile, "pin-file", "", "read the PIN from this file (mode 0600) instead of the terminal")
	logout := &cobra.Command{
		Use: "logout TOKEN", Short: "Log a token out; signing with its keys stops", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				t, err := c.LogoutToken(ctx, &signerv1.LogoutTokenRequest{Token: args[0]})
				if err != nil {
					return err
				}
				return a.printToken(t)
			})
		},
	}
	var oldFile, newFile string
	changePIN := &cobra.Command{
		Use: "change-pin TOKEN", Short: "Change a token's user PIN", Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			oldPIN, err := a.readPIN(oldFile, "Current user PIN: ")
			if err != nil {
				return err
			}
			defer clear(oldPIN)
			newPIN, err := a.readPIN(newFile, "New user PIN: ")
			if err != nil {
				return err
			}
			defer clear(newPIN)
			if newFile == "" {
				again, err := a.readPIN("", "New user PIN again: ")
				if err != nil {
					return err
				}
				same := subtle.ConstantTimeCompare(again, newPIN) == 1
				clear(again)
				if !same {
					return errors.New("the new PINs differ")
				}
			}
			return a.call(cmd, func(ctx context.Context, c *client.Client) error {
				t, err := c.ChangePin(ctx, &signerv1.ChangePinRequest{Token: args[0], OldPin: oldPIN, NewPin: newPIN})
				if err != nil {
					return err
				}
				return a.printToken(t)
			})
		},
	}
	changePIN.Flags().StringVar(&oldFile, "old-pin-file", "", "read the current PIN from this file")
	changePIN.Flags().StringVar(&newFile, "new-pin-file", "", "read the new PIN from this file")
	cmd.AddCommand(list, login, logout, changePIN)
	return cmd
}

// maxPINFileBytes is the longest PIN file read, with room for a "\r\n".
const maxPINFileBytes = 1024 + 2

// readPIN reads a PIN from path, or from the terminal without echo. PINs
// are never taken from a flag value: argv is visible to every user. The
// PIN is read into one buffer and returned in it, never turned into a
// string, so that the caller's clear removes it (the terminal reader,
// golang.org/x/term, may leave a copy of a PIN longer than 8 bytes in a
// buffer it outgrew).
func (a *app) readPIN(path, prompt string) ([]byte, error) {
	if path != "" {
		return readPINFile(path)
	}
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return nil, errors.New("no terminal to read the PIN from; use --pin-file")
	}
	defer tty.Close()
	if _, err := io.WriteString(tty, prompt); err != nil {
		return nil, err
	}
	pin, err := term.ReadPassword(int(tty.Fd()))
	_, _ = io.WriteString(tty, "\n")
	if err != nil {
		clear(pin)
		return nil, fmt.Errorf("reading the PIN: %w", err)
	}
	if len(pin) == 0 {
		return nil, errors.New("empty PIN")
	}
	return pin, nil
}

// readPINFile reads a PIN file of mode 0600 or stricter into a buffer of
// fixed size and returns the PIN in that buffer, without its trailing
// line ending.
func readPINFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("PIN file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("PIN file: %w", err)
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("PIN file %s is readable by others (mode %04o); chmod 600 it", path, st.Mode().Perm())
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("PIN file %s is not a regular file", path)
	}
	buf := make([]byte, maxPINFileBytes+1)
	n, err := io.ReadFull(f, buf)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		clear(buf)
		return nil, fmt.Errorf("PIN file: %w", err)
	}
	if n > maxPINFileBytes {
		clear(buf)
		return nil, fmt.Errorf("PIN file %s is larger than %d bytes", path, maxPINFileBytes)
	}
	pin := bytes.TrimRight(buf[:n], "\r\n")
	if len(pin) == 0 {
		clear(buf)
		return nil, fmt.Errorf("PIN file %s is empty", path)
	}
	return pin, nil
}

func (a *app) printToken(t *signerv1.Token) error {
	if a.output == "json" {
		return a.printJSON(t)
	}
	return a.tokenTable([]*signerv1.Token{t})
}

func (a *app) tokenTable(ts []*signerv1.Token) error {
	var rows [][]string
	for _, t := range ts {
		avail := yesNo(t.GetAvailable())
		if !t.GetAvailable() {
			avail = "no: " + t.GetUnavailableReason()
		}
		loggedIn := yesNo(t.GetLoggedIn())
		if !t.GetLoggedIn() && t.GetLoggedOutReason() != "" {
			loggedIn = "no: " + t.GetLoggedOutReason()
		}
		pin := "ok"
		switch p := t.GetPin(); {
		case p.GetLocked():
			pin = "LOCKED"
		case p.GetFinalTry():
			pin = "final try"
		case p.GetToBeChanged():
			pin = "must be changed"
		case p.GetCountLow():
			pin = "count low"
		}
		rows = append(rows, []string{t.GetName(), t.GetLabel(), t.GetSerial(), loggedIn, pin,
			fmt.Sprintf("%d/%d (%d busy)", t.GetSessionsOpen(), t.GetPoolSize(), t.GetSessionsInUse()), avail})
	}
	return a.table([]string{"TOKEN", "LABEL", "SERIAL", "LOGGED IN", "PIN", "SESSIONS", "AVAILABLE"}, rows)
}
