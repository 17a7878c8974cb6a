package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"strings"

	"github.com/BurntSushi/toml"
)

// Limits on values, beyond which a configuration is refused.
const (
	MaxConfigBytes  = 1 << 20 // largest configuration file Load reads
	MaxSessions     = 1024    // most sessions one token may be given
	maxBatchLimit   = 1 << 20
	maxStreamsLimit = 1 << 16
	// minStreams leaves signer/client, which keeps one SignStream open on
	// its connection, room for another call beside it.
	minStreams      = 2
	maxMessageLimit = 1<<31 - 1 // gRPC sizes are int32
	// MinMessageBytes is the smallest max_message_bytes: below it ordinary
	// calls (a certificate with its chain, a stream of Sign calls) would
	// not fit.
	MinMessageBytes = 64 << 10
	maxNameLen      = 64
)

// Config is a validated signerd configuration with defaults applied.
type Config struct {
	Server Server
	// Limits bound what one uid may take of the daemon.
	Limits  Limits
	Modules []Module
	// Policy is the access policy; nil denies everything.
	Policy *Policy
	// OCSP is how OCSP responses are fetched, checked and kept fresh.
	OCSP OCSP
	// TSA is the built-in time-stamping authority and the client of
	// external ones.
	TSA TSA
	// XRoad is X-Road's own signer protocol on a TCP listener.
	XRoad XRoad
}

// Default returns a configuration with every default, no modules and a
// policy that denies everything.
func Default() *Config {
	return &Config{
		Server: Server{
			GRPCSocket:      DefaultGRPCSocket,
			HTTPSocket:      DefaultHTTPSocket,
			StateDir:        DefaultStateDir,
			AuditFile:       DefaultAuditFile,
			AuditMode:       DefaultAuditMode,
			MaxMessageBytes: DefaultMaxMessageBytes,
			MaxBatch:        DefaultMaxBatch,
			MaxStreams:      DefaultMaxStreams,
			ShutdownTimeout: DefaultShutdownTimeout,
			LogLevel:        DefaultLogLevel,

			AuditCheckpointInterval: DefaultAuditCheckpointInterval,
		},
		Limits: DefaultLimits(),
		Policy: (&checker{}).policy(Admins{}, nil),
		OCSP:   DefaultOCSP(),
		TSA:    DefaultTSA(),
	}
}

// Load reads and parses the configuration file at path. The file must be
// a regular file (a symbolic link to one is followed) not writable by group
// or others, since it holds the access policy, and at most MaxConfigBytes.
func Load(path string) (*Config, error) {
	data, err := readConfigFile(path)
	if err != nil {
		return nil, err
	}
	return Parse(data, path)
}

// ReloadPolicy reads the configuration file at path again and returns its
// policy. The whole file is validated as by Load, so an invalid file
// returns an error and the caller keeps the policy it has; changes to
// other tables take effect only when the daemon restarts.
func ReloadPolicy(path string) (*Policy, error) {
	c, err := Load(path)
	if err != nil {
		return nil, err
	}
	return c.Policy, nil
}

func readConfigFile(path string) ([]byte, error) {
	fail := func(msg string, err error) error {
		return &Error{File: path, Msg: msg, Err: err}
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fail(fmt.Sprintf("cannot open: %v", err), err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fail(fmt.Sprintf("cannot stat: %v", err), err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fail(fmt.Sprintf("not a regular file (%v)", fi.Mode().Type()), nil)
	}
	if perm := fi.Mode().Perm(); perm&0o022 != 0 {
		return nil, fail(fmt.Sprintf("mode %04o lets group or others write it; refusing a policy anyone may change", perm), nil)
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxConfigBytes+1))
	if err != nil {
		return nil, fail(fmt.Sprintf("cannot read: %v", err), err)
	}
	if len(data) > MaxConfigBytes {
		return nil, fail(fmt.Sprintf("larger than %d bytes", MaxConfigBytes), nil)
	}
	return data, nil
}

// Parse parses and validates a configuration; name (usually the file's
// path) prefixes every error. Keys the file leaves out take their defaults.
// Unknown keys, syntax errors and every invalid value are reported, each as
// an *Error wrapping ErrInvalid, joined with errors.Join when there are
// several.
func Parse(data []byte, name string) (*Config, error) {
	ck := &checker{name: name, data: data}
	if line := ck.index().tooDeep; line > 0 {
		return nil, &Error{File: name, Line: line, Msg: fmt.Sprintf("nested deeper than %d levels (keys, tables, arrays); refusing", maxDepth)}
	}
	fc := defaultFile()
	md, err := toml.NewDecoder(bytes.NewReader(data)).Decode(&fc)
	if err != nil {
		var pe toml.ParseError
		if !errors.As(err, &pe) || pe.LastKey != "" {
			// A value of the wrong type: the decoder names the key but not
			// which element of an array of tables holds it, so look again.
			var generic map[string]any
			if _, gerr := toml.Decode(string(data), &generic); gerr == nil {
				ck.types(generic, reflect.TypeFor[fileConfig](), "")
				if len(ck.errs) > 0 {
					return nil, ck.err()
				}
			}
		}
		return nil, decodeError(name, err)
	}
	ck.unknownKeys(md)
	c := ck.config(&fc)
	if err := ck.err(); err != nil {
		return nil, err
	}
	return c, nil
}

// decodeError turns an error of the toml package into an *Error, keeping
// the parser's line and column.
func decodeError(name string, err error) error {
	var pe toml.ParseError
	if errors.As(err, &pe) {
		msg := pe.Message
		if pe.LastKey != "" {
			msg = fmt.Sprintf("%s (last key %q)", msg, pe.LastKey)
		}
		return &Error{File: name, Line: pe.Position.Line, Col: pe.Position.Col, Key: pe.LastKey, Msg: msg, Err: pe}
	}
	return &Error{File: name, Msg: strings.TrimPrefix(err.Error(), "toml: "), Err: err}
}

// Marshal encodes c as TOML that Parse reads back to the same
// configuration. It validates c first and refuses an invalid one.
func (c *Config) Marshal() ([]byte, error) {
	fc := c.file()
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(fc); err != nil {
		return nil, &Error{File: "marshal", Msg: fmt.Sprintf("cannot encode: %v", err), Err: err}
	}
	if _, err := Parse(buf.Bytes(), "marshal"); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// TokenByName returns the module and token named name.
func (c *Config) TokenByName(name string) (Module, Token, bool) {
	for _, m := range c.Modules {
		for _, t := range m.Tokens {
			if t.Name == name {
				return m, t, true
			}
		}
	}
	return Module{}, Token{}, false
}
