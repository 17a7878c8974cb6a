package signer

import (
	"context"
	"errors"
	"testing"
	"time"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
)

// TestCheckHealth: a logged-in token that answers passes; a logged-out
// token is not asked; a check whose HSM call does not return fails at its
// deadline, and every check after it fails as busy until the call
// returns.
func TestCheckHealth(t *testing.T) {
	d := newDaemon(t)
	ctx := testCtx(t)
	if err := d.svc.CheckHealth(ctx); err != nil {
		t.Fatalf("healthy daemon: %v", err)
	}
	if _, err := d.client.LogoutToken(ctx, &signerv1.LogoutTokenRequest{Token: "t1"}); err != nil {
		t.Fatal(err)
	}
	if err := d.svc.CheckHealth(ctx); err != nil {
		t.Fatalf("with the token logged out: %v", err)
	}
	release := make(chan struct{})
	d.svc.health.stall = func() { <-release }
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := d.svc.CheckHealth(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a hung HSM call: %v", err)
	}
	if err := d.svc.CheckHealth(ctx); !errors.Is(err, ErrHealthCheckBusy) {
		t.Fatalf("a check beside the hung one: %v", err)
	}
	d.svc.health.stall = nil
	close(release)
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := d.svc.CheckHealth(ctx)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrHealthCheckBusy) || time.Now().After(deadline) {
			t.Fatalf("after the HSM answered: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
