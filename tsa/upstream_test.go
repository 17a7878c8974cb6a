package tsa

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/digitorus/timestamp"
)

// upstreamServer serves an openssl TSA over HTTP, counting requests; its
// answer can be replaced.
type upstreamServer struct {
	srv   *httptest.Server
	calls atomic.Int64
	mu    sync.Mutex
	alter func(req []byte) []byte // answers instead of the TSA, when set
}

func newUpstreamServer(t *testing.T, o *opensslTSA) *upstreamServer {
	u := &upstreamServer{}
	u.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u.calls.Add(1)
		req, _ := io.ReadAll(r.Body)
		u.mu.Lock()
		alter := u.alter
		u.mu.Unlock()
		var resp []byte
		if alter != nil {
			resp = alter(req)
		} else {
			resp = o.reply(t, req)
		}
		w.Header().Set("Content-Type", "application/timestamp-reply")
		w.Write(resp)
	}))
	t.Cleanup(u.srv.Close)
	return u
}

func deadURL(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return "http://" + l.Addr().String()
}

func trustOf(ts *testTSA) Trust {
	p := x509.NewCertPool()
	p.AddCert(ts.ca)
	return Trust{Roots: p}
}

// TestUpstreamFailoverAndRejections: a dead first URL fails over to the
// openssl TSA; a TSA whose token is for another imprint, carries another
// nonce or comes from an untrusted signer is rejected, and with no TSA
// left the mode turns unhealthy.
func TestUpstreamFailoverAndRejections(t *testing.T) {
	o := newOpenSSLTSA(t)
	up := newUpstreamServer(t, o)
	u, err := NewUpstream(UpstreamConfig{URLs: []string{deadURL(t), up.srv.URL}, Trust: trustOf(o.testTSA), UnhealthyAfter: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	digest := sha256.Sum256([]byte("a record"))
	s, err := u.Stamp(context.Background(), crypto.SHA256, digest[:])
	if err != nil {
		t.Fatalf("failover: %v", err)
	}
	if err := VerifyStamp(s, crypto.SHA256, digest[:]); err != nil {
		t.Fatal(err)
	}
	if h := u.Health(); !h.Healthy || h.LastSuccess.IsZero() || !strings.Contains(h.LastError, "connect") {
		t.Fatalf("health after failover: %+v", h)
	}
	other := newOpenSSLTSA(t)
	otherDigest := sha256.Sum256([]byte("another record"))
	var replayed []byte
	for _, c := range []struct {
		name  string
		alter func(req []byte) []byte
		want  string
	}{
		{"token for another imprint", func([]byte) []byte { return mustReply(t, o, otherDigest[:], nil) }, "another imprint"},
		{"another nonce (a replay)", func(req []byte) []byte {
			if replayed == nil {
				replayed = o.reply(t, req)
			}
			return replayed
		}, "nonce"},
		{"untrusted signer", func(req []byte) []byte { return other.reply(t, req) }, "chain"},
		{"a refusal", func([]byte) []byte {
			b, _ := timestamp.CreateErrorResponse(timestamp.Rejection, timestamp.SystemFailure)
			return b
		}, "answered"},
	} {
		up.mu.Lock()
		up.alter = c.alter
		up.mu.Unlock()
		if c.name == "another nonce (a replay)" {
			// The first call records the answer; the second gets it again.
			u.Stamp(context.Background(), crypto.SHA256, digest[:])
		}
		_, err := u.Stamp(context.Background(), crypto.SHA256, digest[:])
		if !errors.Is(err, ErrToken) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want a rejection naming %q", c.name, err, c.want)
		}
	}
	if h := u.Health(); h.Healthy {
		t.Fatalf("every TSA failing past UnhealthyAfter, still healthy: %+v", h)
	}
}

// TestUpstreamBatching: 100 concurrent requests within the window become
// one upstream call, and every caller's inclusion proof leads to the root
// the token stamps.
func TestUpstreamBatching(t *testing.T) {
	o := newOpenSSLTSA(t)
	up := newUpstreamServer(t, o)
	u, err := NewUpstream(UpstreamConfig{URLs: []string{up.srv.URL}, Trust: trustOf(o.testTSA), Window: 300 * time.Millisecond, MaxBatch: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	const n = 100
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			d := sha256.Sum256([]byte(fmt.Sprint("record ", i)))
			s, err := u.Stamp(context.Background(), crypto.SHA256, d[:])
			if err == nil {
				err = VerifyStamp(s, crypto.SHA256, d[:])
			}
			if err == nil && s.Size != n {
				err = fmt.Errorf("batch of %d, want %d", s.Size, n)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if c := up.calls.Load(); c != 1 {
		t.Fatalf("%d upstream calls for %d requests in one window", c, n)
	}
	if h := u.Health(); len(h.BatchSizes) != 1 || h.BatchSizes[0] != n || h.Stamps != n {
		t.Fatalf("health: %+v", h)
	}
	// A proof for one digest does not verify another.
	d0 := sha256.Sum256([]byte("record 0"))
	s, err := u.Stamp(context.Background(), crypto.SHA256, d0[:])
	if err != nil {
		t.Fatal(err)
	}
	wrong := sha256.Sum256([]byte("not stamped"))
	if err := VerifyStamp(s, crypto.SHA256, wrong[:]); err == nil {
		t.Fatal("a stamp verified for a digest it does not cover")
	}
}
