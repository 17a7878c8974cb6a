package config

import (
	"log/slog"
	"strings"
	"time"
)

// Defaults for the [server] table, used for every key the file leaves out.
const (
	DefaultGRPCSocket      = "/run/signerd/signer.sock"
	DefaultHTTPSocket      = "/run/signerd/http.sock"
	DefaultStateDir        = "/var/lib/signerd"
	DefaultAuditFile       = "/var/log/signerd/audit.jsonl"
	DefaultAuditMode       = AuditBuffered
	DefaultMaxMessageBytes = 1 << 20
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

// AuditMode says when audit lines reach the disk.
type AuditMode string

// The audit modes.
const (
	AuditSync     AuditMode = "sync"     // each reply waits for its line to be synced
	AuditBuffered AuditMode = "buffered" // lines are synced in groups, after the reply
)

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
	// MaxMessageBytes is the largest gRPC request message accepted, at
	// least MinMessageBytes. A request still being received is held in
	// memory up to this size, and one uid can have at most
	// Limits.CallsPerUID of them: their product bounds what one uid can
	// make signerd hold.
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

// fileServer is the [server] table.
type fileServer struct {
	GRPCSocket      string `toml:"grpc_socket"`
	HTTPSocket      string `toml:"http_socket"`
	SocketGroup     string `toml:"socket_group"`
	StateDir        string `toml:"state_dir"`
	AuditFile       string `toml:"audit_file"`
	AuditMode       string `toml:"audit_mode"`
	MaxMessageBytes int64  `toml:"max_message_bytes"`
	MaxBatch        int64  `toml:"max_batch"`
	MaxStreams      int64  `toml:"max_concurrent_streams"`
	ShutdownTimeout string `toml:"shutdown_timeout"`
	LogLevel        string `toml:"log_level"`

	AuditCheckpointInterval string `toml:"audit_checkpoint_interval"`
	AuditCheckpointKey      string `toml:"audit_checkpoint_key"`
}

// check checks the [server] table into c.Server.
func (fs *fileServer) check(ck *checker, c *Config) {
	s := Server{
		GRPCSocket:      fs.GRPCSocket,
		HTTPSocket:      fs.HTTPSocket,
		SocketGroup:     fs.SocketGroup,
		StateDir:        fs.StateDir,
		AuditFile:       fs.AuditFile,
		AuditMode:       AuditMode(fs.AuditMode),
		MaxMessageBytes: int(fs.MaxMessageBytes),
		MaxBatch:        int(fs.MaxBatch),
		MaxStreams:      int(fs.MaxStreams),
	}
	ck.checkPath("server.grpc_socket", s.GRPCSocket, true)
	ck.checkPath("server.http_socket", s.HTTPSocket, true)
	if s.GRPCSocket == s.HTTPSocket {
		ck.addf("server.http_socket", "must differ from grpc_socket")
	}
	ck.checkPath("server.state_dir", s.StateDir, false)
	ck.checkPath("server.audit_file", s.AuditFile, false)
	if g := s.SocketGroup; g != "" && (len(g) > 32 || g[0] == '-' || strings.ContainsFunc(g, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == '.')
	})) {
		ck.addf("server.socket_group", "%q is not a group name or gid", g)
	}
	switch s.AuditMode {
	case AuditSync, AuditBuffered:
	default:
		ck.addf("server.audit_mode", "%q is not one of sync, buffered", fs.AuditMode)
	}
	if fs.MaxMessageBytes < MinMessageBytes || fs.MaxMessageBytes > maxMessageLimit {
		ck.addf("server.max_message_bytes", "%d is not between %d and %d", fs.MaxMessageBytes, MinMessageBytes, maxMessageLimit)
	}
	if fs.MaxBatch < 1 || fs.MaxBatch > maxBatchLimit {
		ck.addf("server.max_batch", "%d is not between 1 and %d", fs.MaxBatch, maxBatchLimit)
	}
	if fs.MaxStreams < minStreams || fs.MaxStreams > maxStreamsLimit {
		ck.addf("server.max_concurrent_streams", "%d is not between %d (signer/client keeps a stream open) and %d", fs.MaxStreams, minStreams, maxStreamsLimit)
	}
	d, err := time.ParseDuration(fs.ShutdownTimeout)
	switch {
	case err != nil:
		ck.addf("server.shutdown_timeout", "%q is not a duration such as \"10s\"", fs.ShutdownTimeout)
	case d <= 0:
		ck.addf("server.shutdown_timeout", "%q must be greater than zero", fs.ShutdownTimeout)
	}
	s.ShutdownTimeout = d
	level, ok := parseLevel(fs.LogLevel)
	if !ok {
		ck.addf("server.log_level", "%q is not one of debug, info, warn, error", fs.LogLevel)
	}
	s.LogLevel = level
	fs.checkAuditCheckpoints(ck, &s)
	c.Server = s
}

// checkAuditCheckpoints checks the audit_checkpoint_* keys into s.
func (fs *fileServer) checkAuditCheckpoints(ck *checker, s *Server) {
	d, err := time.ParseDuration(fs.AuditCheckpointInterval)
	switch {
	case err != nil:
		ck.addf("server.audit_checkpoint_interval", "%q is not a duration such as \"5m\" (\"0s\" turns checkpoints off)", fs.AuditCheckpointInterval)
	case d != 0 && d < MinAuditCheckpointInterval:
		ck.addf("server.audit_checkpoint_interval", "%q is neither 0 (off) nor at least %s", fs.AuditCheckpointInterval, MinAuditCheckpointInterval)
	}
	s.AuditCheckpointInterval = d
	if k := fs.AuditCheckpointKey; k != "" {
		if problem := keyIDProblem(k); problem != "" || k == Wildcard {
			ck.addf("server.audit_checkpoint_key", "%q is not a key id: an even number (2 to 256) of hex digits", k)
		}
		s.AuditCheckpointKey = strings.ToLower(k)
	}
}
