package config

import (
	"log/slog"
	"reflect"
	"strings"

	"github.com/BurntSushi/toml"
)

// The file* types are the TOML schema exactly as written in the file; Parse
// decodes into them and checks them into a Config, Marshal goes back.
// Their toml tags are the only key names accepted (see allowedKeys).

type fileConfig struct {
	Server  fileServer  `toml:"server"`
	Limits  fileLimits  `toml:"limits"`
	Modules fileModules `toml:"module"`
	Policy  filePolicy  `toml:"policy"`
	OCSP    fileOCSP    `toml:"ocsp"`
	TSA     fileTSA     `toml:"tsa"`
	XRoad   fileXRoad   `toml:"xroad"`
}

// defaultFile returns the schema filled with the defaults, for Parse to
// decode over.
func defaultFile() fileConfig {
	return fileConfig{Server: fileServer{
		GRPCSocket:      DefaultGRPCSocket,
		HTTPSocket:      DefaultHTTPSocket,
		StateDir:        DefaultStateDir,
		AuditFile:       DefaultAuditFile,
		AuditMode:       string(DefaultAuditMode),
		MaxMessageBytes: DefaultMaxMessageBytes,
		MaxBatch:        DefaultMaxBatch,
		MaxStreams:      DefaultMaxStreams,
		ShutdownTimeout: DefaultShutdownTimeout.String(),
		LogLevel:        levelName(DefaultLogLevel),

		AuditCheckpointInterval: DefaultAuditCheckpointInterval.String(),
	}, Limits: DefaultLimits().file(), OCSP: DefaultOCSP().file(), TSA: DefaultTSA().file()}
}

// allowedKeys returns every key the schema has, named as toml.Key.String
// names them without array indexes: "server.grpc_socket",
// "module.token.pin", "policy.client.keys", ...
func allowedKeys() map[string]bool {
	keys := map[string]bool{}
	var walk func(prefix toml.Key, t reflect.Type)
	walk = func(prefix toml.Key, t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
			k := append(append(toml.Key(nil), prefix...), name)
			keys[k.String()] = true
			ft := f.Type
			for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct {
				walk(k, ft)
			}
		}
	}
	walk(nil, reflect.TypeFor[fileConfig]())
	return keys
}

// levelName names l as the log_level key does; a level between the four
// named ones gets slog's name, which Parse refuses.
func levelName(l slog.Level) string {
	switch l {
	case slog.LevelDebug:
		return "debug"
	case slog.LevelInfo:
		return "info"
	case slog.LevelWarn:
		return "warn"
	case slog.LevelError:
		return "error"
	}
	return l.String()
}

// parseLevel reads a log_level value.
func parseLevel(s string) (slog.Level, bool) {
	switch s {
	case "debug":
		return slog.LevelDebug, true
	case "info":
		return slog.LevelInfo, true
	case "warn":
		return slog.LevelWarn, true
	case "error":
		return slog.LevelError, true
	}
	return 0, false
}

// file converts c back to the schema.
func (c *Config) file() fileConfig {
	s := c.Server
	fc := fileConfig{Server: fileServer{
		GRPCSocket:      s.GRPCSocket,
		HTTPSocket:      s.HTTPSocket,
		SocketGroup:     s.SocketGroup,
		StateDir:        s.StateDir,
		AuditFile:       s.AuditFile,
		AuditMode:       string(s.AuditMode),
		MaxMessageBytes: int64(s.MaxMessageBytes),
		MaxBatch:        int64(s.MaxBatch),
		MaxStreams:      int64(s.MaxStreams),
		ShutdownTimeout: s.ShutdownTimeout.String(),
		LogLevel:        levelName(s.LogLevel),

		AuditCheckpointInterval: s.AuditCheckpointInterval.String(),
		AuditCheckpointKey:      s.AuditCheckpointKey,
	}, Limits: c.Limits.file(), OCSP: c.OCSP.file(), TSA: c.TSA.file(), XRoad: c.XRoad.file()}
	for _, m := range c.Modules {
		fm := fileModule{Name: m.Name, Path: m.Path, Tokens: []fileToken{}}
		for _, t := range m.Tokens {
			pin := t.PIN.String()
			verify := t.Verify
			fm.Tokens = append(fm.Tokens, fileToken{
				Name: t.Name, Token: t.Selector, PIN: &pin,
				Sessions: int64(t.Sessions), Verify: &verify,
			})
		}
		fc.Modules = append(fc.Modules, fm)
	}
	a := c.Policy.Admins()
	fc.Policy.Admins = fileAdmins{UIDs: ids64(a.UIDs), GIDs: ids64(a.GIDs)}
	for _, r := range c.Policy.ClientRules() {
		fc.Policy.Clients = append(fc.Policy.Clients, fileClient{
			Name: r.Name, UIDs: ids64(r.UIDs), GIDs: ids64(r.GIDs),
			Keys: nonNil(r.Keys), Usages: nonNil(r.Usages), Members: nonNil(r.Members),
		})
	}
	return fc
}

// ids64 widens ids; never nil, so that the encoder writes "[]".
func ids64(ids []uint32) []int64 {
	out := make([]int64, len(ids))
	for i, id := range ids {
		out[i] = int64(id)
	}
	return out
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
