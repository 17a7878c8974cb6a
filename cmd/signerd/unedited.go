package main

import (
	"errors"
	"fmt"

	"github.com/hsmsigner/hsmsigner/signer/config"
)

// placeholderModule is the module path of the configuration shipped in
// systemd/signerd.toml (the Debian package's /etc/signerd/signerd.toml):
// no PKCS#11 library is there, so that an officer must say which HSM to
// use before signerd starts.
const placeholderModule = "/EDIT-ME/path/to/your-vendor-pkcs11-module.so"

// errUnedited is returned (wrapped) by checkEdited for a configuration
// that still names the placeholder module.
var errUnedited = errors.New("the configuration has not been edited yet")

// checkEdited refuses a configuration whose [[module]] path is still the
// shipped placeholder, naming the file, the key and what to set.
func checkEdited(path string, cfg *config.Config) error {
	for i, m := range cfg.Modules {
		if m.Path == placeholderModule {
			return fmt.Errorf("%s: %w: module[%d].path is the placeholder %q; set it to your HSM vendor's PKCS#11 library "+
				"(SoftHSM2: /usr/lib/softhsm/libsofthsm2.so), name its token and give the policy's uids, then start signerd (systemctl enable --now signerd)",
				path, errUnedited, i, placeholderModule)
		}
	}
	return nil
}
