package signer

import (
	"testing"

	"github.com/hsmsigner/hsmsigner/signer/client"
)

// SeamDaemon is a test daemon for the tests outside package signer
// (seam_test.go), which see only the exported API.
type SeamDaemon struct {
	// Service is the running service.
	Service *Service
	// Client is connected to its socket as the test user, who is admin
	// and a client that may use keys of usage sign and tsa.
	Client *client.Client
	// AuditFile is the path of its audit log.
	AuditFile string
	d         *testDaemon
}

// NewSeamDaemon starts a daemon as newDaemon does, its audit log behind
// a switch (see FailAudit).
func NewSeamDaemon(t testing.TB) SeamDaemon {
	d := newDaemon(t, func(p *daemonParams) {
		p.ClientUsages = `"sign", "tsa"`
		p.SwitchAudit = true
	})
	return SeamDaemon{Service: d.svc, Client: d.client, AuditFile: d.cfg.Server.AuditFile, d: d}
}

// FailAudit makes every audit write fail while on is true.
func (sd SeamDaemon) FailAudit(on bool) {
	if on {
		sd.d.audit.set(failingAudit{})
		return
	}
	sd.d.audit.set(nil)
}
