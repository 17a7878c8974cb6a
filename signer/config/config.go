package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Defaults for the [server] table, used for every key the file leaves out.
const (
	DefaultGRPCSocket      = "/run/signerd/signer.sock"
	DefaultHTTPSocket      = "/run/signerd/http.sock"
	DefaultStateDir        = "/var/lib/signerd"
	DefaultAuditFile       = "/var/log/signerd/audit.jsonl"
	DefaultAuditMode       = AuditBuffered
	DefaultMaxMessageBytes = 4 << 20
	DefaultMaxBatch        = 4096
	DefaultMaxStreams      = 256
	DefaultShutdownTimeout = 10 * time.Second
	DefaultLogLevel        = slog.LevelInfo
	// DefaultAuditCheckpointInterval spaces the signed checkpoints of the
	// audit log.
	DefaultAuditCheckpointInterval = 5 * time.Minute
)

// MinAuditCheckpointInterval is the shortest audit_checkpoint_interval
// other than 0 (no checkpoints).
const MinAuditCheckpointInterval = time.Second

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

// AuditMode says when audit lines reach the disk.
type AuditMode string

// The audit modes.
const (
	AuditSync     AuditMode = "sync"     // each reply waits for its line to be synced
	AuditBuffered AuditMode = "buffered" // lines are synced in groups, after the reply
)

// Config is a validated signerd configuration with defaults applied.
type Config struct {
	Server Server
	// Limits bound what one uid may take of the daemon.
	Limits  Limits
	Modules []Module
	// Policy is the access policy; nil denies everything.
	Policy *Policy
}

// Server holds the [server] table.
type Server struct {
	// GRPCSocket is the Unix socket of the gRPC API.
	GRPCSocket string
	// HTTPSocket is the Unix socket serving /metrics and /healthz.
	HTTPSocket string
	// SocketGroup owns both sockets (mode 0660); "" means the daemon's
	// primary group. A name or a numeric gid; resolved by the daemon.
	SocketGroup string
	// StateDir holds the bbolt state file.
	StateDir string
	// AuditFile is the JSON-lines audit log.
	AuditFile string
	// AuditMode is AuditSync or AuditBuffered.
	AuditMode AuditMode
	// MaxMessageBytes is the largest gRPC message accepted or sent, at
	// least MinMessageBytes.
	MaxMessageBytes int
	// MaxBatch is the most digests in one SignBatch.
	MaxBatch int
	// MaxStreams is the most gRPC calls one connection may have in
	// progress at once (HTTP/2's max concurrent streams), at least 2; a
	// client's further calls wait on its side until one ends. A
	// signer/client connection's shared SignStream counts as one.
	MaxStreams int
	// ShutdownTimeout bounds a graceful stop.
	ShutdownTimeout time.Duration
	// LogLevel is one of slog's Debug, Info, Warn and Error levels.
	LogLevel slog.Level
	// AuditCheckpointInterval is how often the daemon signs the audit
	// log's head with the audit key and appends the checkpoint (and once
	// more at shutdown); 0 turns checkpoints off.
	AuditCheckpointInterval time.Duration
	// AuditCheckpointKey is the id (lower-case hex) of the key that signs
	// checkpoints, which must have usage "audit"; "" means the one key
	// with usage "audit" in the state.
	AuditCheckpointKey string
}

// Module is one [[module]]: a PKCS#11 library and the tokens used from it.
type Module struct {
	// Name is unique among modules.
	Name string
	// Path is the absolute path of the PKCS#11 shared library.
	Path string
	// Tokens are the module's [[module.token]] entries; at least one.
	Tokens []Token
}

// Token is one [[module.token]].
type Token struct {
	// Name is the token's id in the API and in signerctl, unique across
	// all modules.
	Name string
	// Selector names the token in the module: a label, "label:…",
	// "serial:…", or a PKCS#11 URI with token= or serial=. The hsm package
	// parses it; here it is only checked for syntax.
	Selector string
	// PIN says where the user PIN comes from.
	PIN PINSource
	// Sessions is the size of the token's session pool; 0 means the CPU
	// count capped by the token's maximum.
	Sessions int
	// Verify verifies each signature (RSA and ECDSA) with the public key
	// before it leaves (verify_signatures; rsa_verify is its old name).
	Verify bool
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
