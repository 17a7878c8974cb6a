package ocsp

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Method is how a request is sent to a responder.
type Method string

// The two ways of asking a responder.
const (
	// MethodPOST sends the DER request as the body (RFC 6960, A.1).
	MethodPOST Method = "POST"
	// MethodGET puts the base64 request in the URL's path (RFC 5019), so
	// caches on the way may answer it.
	MethodGET Method = "GET"
)

// Responder is one OCSP responder to ask.
type Responder struct {
	// URL is the responder's http:// or https:// address.
	URL string
	// Method is MethodPOST (the default) or MethodGET.
	Method Method
	// Nonce sends a fresh nonce with each request and then requires the
	// response to echo it.
	Nonce bool
}

func (r Responder) method() Method {
	if r.Method == "" {
		return MethodPOST
	}
	return r.Method
}

// Default limits of a fetch.
const (
	DefaultConnectTimeout  = 5 * time.Second
	DefaultReadTimeout     = 10 * time.Second
	DefaultMaxResponseSize = 64 << 10
)

// FetchLimits bound one request to a responder.
type FetchLimits struct {
	// ConnectTimeout bounds the TCP (and TLS) connection.
	ConnectTimeout time.Duration
	// ReadTimeout bounds the rest: sending the request and reading the
	// whole response.
	ReadTimeout time.Duration
	// MaxResponseSize is the largest response body read; a larger one is
	// refused.
	MaxResponseSize int64
}

func (l FetchLimits) withDefaults() FetchLimits {
	if l.ConnectTimeout <= 0 {
		l.ConnectTimeout = DefaultConnectTimeout
	}
	if l.ReadTimeout <= 0 {
		l.ReadTimeout = DefaultReadTimeout
	}
	if l.MaxResponseSize <= 0 {
		l.MaxResponseSize = DefaultMaxResponseSize
	}
	return l
}

// FetchError is a failure to get bytes from a responder: unreachable, too
// slow, an HTTP error, or a body too large.
type FetchError struct {
	URL    string
	Reason string
	Err    error
}

// Error names the responder and what went wrong.
func (e *FetchError) Error() string {
	return fmt.Sprintf("OCSP responder %s: %s", e.URL, e.Reason)
}

// Unwrap returns the underlying error, if any.
func (e *FetchError) Unwrap() error { return e.Err }

// fetcher sends OCSP requests over HTTP within its limits.
type fetcher struct {
	client *http.Client
	limits FetchLimits
}

func newFetcher(l FetchLimits, transport http.RoundTripper) *fetcher {
	l = l.withDefaults()
	if transport == nil {
		transport = &http.Transport{
			// Responders are reached directly: a proxy from the
			// environment of a daemon is a surprise, not a setting.
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: l.ConnectTimeout}).DialContext,
			TLSHandshakeTimeout:   l.ConnectTimeout,
			ResponseHeaderTimeout: l.ReadTimeout,
			MaxIdleConnsPerHost:   4,
			IdleConnTimeout:       90 * time.Second,
		}
	}
	return &fetcher{
		client: &http.Client{
			Transport: transport,
			// A responder answers; it does not send us elsewhere.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		limits: l,
	}
}

// fetch sends req to r and returns the response body.
func (f *fetcher) fetch(ctx context.Context, r Responder, req []byte) ([]byte, error) {
	u, err := url.Parse(r.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, &FetchError{URL: r.URL, Reason: "not an http(s) URL", Err: err}
	}
	ctx, cancel := context.WithTimeout(ctx, f.limits.ConnectTimeout+f.limits.ReadTimeout)
	defer cancel()
	var hr *http.Request
	switch r.method() {
	case MethodGET:
		// RFC 5019: the URL-encoded base64 of the DER request, appended
		// to the responder's URL as a path segment.
		get := strings.TrimSuffix(r.URL, "/") + "/" + url.PathEscape(base64.StdEncoding.EncodeToString(req))
		hr, err = http.NewRequestWithContext(ctx, http.MethodGet, get, nil)
	case MethodPOST:
		hr, err = http.NewRequestWithContext(ctx, http.MethodPost, r.URL, bytes.NewReader(req))
		if err == nil {
			hr.Header.Set("Content-Type", "application/ocsp-request")
		}
	default:
		return nil, &FetchError{URL: r.URL, Reason: fmt.Sprintf("method %q is neither GET nor POST", r.Method)}
	}
	if err != nil {
		return nil, &FetchError{URL: r.URL, Reason: err.Error(), Err: err}
	}
	hr.Header.Set("Accept", "application/ocsp-response")
	resp, err := f.client.Do(hr)
	if err != nil {
		reason := "unreachable: " + err.Error()
		if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
			reason = fmt.Sprintf("no answer within %s", f.limits.ConnectTimeout+f.limits.ReadTimeout)
		}
		return nil, &FetchError{URL: r.URL, Reason: reason, Err: err}
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, &FetchError{URL: r.URL, Reason: "HTTP " + resp.Status}
	}
	// The content type is not checked: responders label their answers
	// loosely, and the body is verified as a response anyway.
	body, err := io.ReadAll(io.LimitReader(resp.Body, f.limits.MaxResponseSize+1))
	if err != nil {
		reason := "reading the response: " + err.Error()
		if errors.Is(err, context.DeadlineExceeded) || isTimeout(err) {
			reason = fmt.Sprintf("response not read within %s", f.limits.ConnectTimeout+f.limits.ReadTimeout)
		}
		return nil, &FetchError{URL: r.URL, Reason: reason, Err: err}
	}
	if int64(len(body)) > f.limits.MaxResponseSize {
		return nil, &FetchError{URL: r.URL, Reason: fmt.Sprintf("response larger than %d bytes", f.limits.MaxResponseSize)}
	}
	return body, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
