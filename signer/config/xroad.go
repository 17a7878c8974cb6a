package config

import (
	"net/netip"
	"strings"
)

// DefaultXRoadListen is the address X-Road's proxy dials its signer on.
const DefaultXRoadListen = "127.0.0.1:5560"

// XRoad holds the [xroad] table: X-Road's own signer protocol (gRPC on
// TCP with mutual TLS), so that an unmodified X-Road 7.x security server
// signs through signerd. Off while Listen is empty.
type XRoad struct {
	// Listen is the TCP address of the listener, loopback unless
	// AllowNonLoopback.
	Listen string
	// AllowNonLoopback lets Listen be a non-loopback address. A caller
	// from another machine still needs a certificate of the keystore, but
	// no uid can be read from the kernel for it: it acts as RemoteUID,
	// whom the policy must name. Off by default.
	AllowNonLoopback bool
	// RemoteUID is the uid the policy sees for callers from other
	// machines; required with AllowNonLoopback.
	RemoteUID uint32
	// Keystore is X-Road's internal gRPC keystore (PKCS#12: one key and
	// its self-signed certificate, which both sides present and trust), as
	// "/absolute/path" or "credential:NAME" (systemd LoadCredential=).
	Keystore string
	// KeystorePassword is where its password is: a PIN source ("file:…"
	// or "credential:NAME") holding the password alone or X-Road's
	// xroad-grpc-internal-env.properties.
	KeystorePassword PINSource
	// InsecureLoopback serves without TLS, as X-Road does with
	// grpc-internal-tls-enabled=false; only on a loopback Listen.
	InsecureLoopback bool
	// AuthKeyFile is the PKCS#12 file of the security server's
	// authentication key in X-Road's software token, which X-Road's proxy
	// opens itself (GetAuthKey); AuthKeyPassword is the software token's
	// PIN, a PIN source. Both empty: GetAuthKey is refused.
	AuthKeyFile     string
	AuthKeyPassword PINSource
}

type fileXRoad struct {
	Listen           string `toml:"listen"`
	AllowNonLoopback bool   `toml:"allow_non_loopback"`
	RemoteUID        int64  `toml:"remote_uid"`
	Keystore         string `toml:"keystore"`
	KeystorePassword string `toml:"keystore_password"`
	InsecureLoopback bool   `toml:"insecure_loopback"`
	AuthKeyFile      string `toml:"auth_key_file"`
	AuthKeyPassword  string `toml:"auth_key_password"`
}

func (x XRoad) file() fileXRoad {
	f := fileXRoad{Listen: x.Listen, AllowNonLoopback: x.AllowNonLoopback, RemoteUID: int64(x.RemoteUID), Keystore: x.Keystore, InsecureLoopback: x.InsecureLoopback, AuthKeyFile: x.AuthKeyFile}
	if x.KeystorePassword.Kind != "" {
		f.KeystorePassword = x.KeystorePassword.String()
	}
	if x.AuthKeyPassword.Kind != "" {
		f.AuthKeyPassword = x.AuthKeyPassword.String()
	}
	return f
}

// check checks the [xroad] table into c.XRoad.
func (fx *fileXRoad) check(ck *checker, c *Config) {
	x := XRoad{Listen: fx.Listen, AllowNonLoopback: fx.AllowNonLoopback, Keystore: fx.Keystore, InsecureLoopback: fx.InsecureLoopback, AuthKeyFile: fx.AuthKeyFile}
	defer func() { c.XRoad = x }()
	if x.Listen == "" {
		if fx.Keystore != "" || fx.KeystorePassword != "" || fx.AuthKeyFile != "" || fx.InsecureLoopback || fx.AllowNonLoopback || fx.RemoteUID != 0 {
			ck.addf("xroad.listen", "the X-Road listener is off without listen; set it (e.g. %q) or remove the [xroad] table", DefaultXRoadListen)
		}
		return
	}
	ap, err := netip.ParseAddrPort(x.Listen)
	switch {
	case err != nil || ap.Port() == 0:
		ck.addf("xroad.listen", "%q is not an address and port such as %q", x.Listen, DefaultXRoadListen)
	case !ap.Addr().Unmap().IsLoopback() && !x.AllowNonLoopback:
		ck.addf("xroad.listen", "%q is not a loopback address; X-Road's proxy dials its signer on %s (allow_non_loopback = true to override)", x.Listen, DefaultXRoadListen)
	case !ap.Addr().Unmap().IsLoopback() && x.InsecureLoopback:
		ck.addf("xroad.insecure_loopback", "serving without TLS is allowed on a loopback listen address only")
	}
	switch {
	case !x.AllowNonLoopback && fx.RemoteUID != 0:
		ck.addf("xroad.remote_uid", "remote_uid is only for allow_non_loopback = true")
	case x.AllowNonLoopback && (fx.RemoteUID <= 0 || fx.RemoteUID > maxID):
		ck.addf("xroad.remote_uid", "allow_non_loopback needs remote_uid: the uid (not root) the policy sees for callers from other machines")
	case x.AllowNonLoopback:
		x.RemoteUID = uint32(fx.RemoteUID)
	}
	if x.InsecureLoopback {
		if fx.Keystore != "" || fx.KeystorePassword != "" {
			ck.addf("xroad.keystore", "insecure_loopback serves without TLS: leave keystore and keystore_password out")
		}
	} else {
		switch {
		case x.Keystore == "":
			ck.addf("xroad.keystore", "give X-Road's internal gRPC keystore (e.g. \"/var/run/xroad/xroad-grpc-internal-keystore.p12\" or \"credential:NAME\"), or insecure_loopback = true")
		case strings.HasPrefix(x.Keystore, PINFromCredential+":"):
			if _, problem := parsePINSource(x.Keystore); problem != "" {
				ck.addf("xroad.keystore", "%s", strings.Replace(problem, "credential: NAME", "credential:NAME", 1))
			}
		default:
			ck.checkPath("xroad.keystore", x.Keystore, false)
		}
		x.KeystorePassword = ck.pinSource("xroad.keystore_password", fx.KeystorePassword)
	}
	if fx.AuthKeyFile != "" || fx.AuthKeyPassword != "" {
		if fx.AuthKeyFile == "" {
			ck.addf("xroad.auth_key_file", "auth_key_password is set: give the software token's authentication key file too")
		} else {
			ck.checkPath("xroad.auth_key_file", fx.AuthKeyFile, false)
		}
		x.AuthKeyPassword = ck.pinSource("xroad.auth_key_password", fx.AuthKeyPassword)
	}
}

// pinSource checks a PIN source at key, which is required.
func (ck *checker) pinSource(key, v string) PINSource {
	if v == "" {
		ck.addf(key, `give a source: "file:/absolute/path" or "credential:NAME"`)
		return PINSource{}
	}
	ps, problem := parsePINSource(v)
	if problem == "" && ps.Kind == PINFromLogin {
		problem = `"login" is for tokens; give "file:/absolute/path" or "credential:NAME"`
	}
	if problem != "" {
		ck.addf(key, "%s", problem)
		return PINSource{}
	}
	return ps
}
