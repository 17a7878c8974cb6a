package hsm

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"

	"github.com/hsmsigner/hsmsigner/hsm/pkcs11uri"
)

// TokenInfo is what an officer needs to know about a token.
type TokenInfo struct {
	Label           string
	Serial          string
	Manufacturer    string
	Model           string
	Initialized     bool
	LoginRequired   bool
	PIN             PINStatus
	SessionCount    uint // sessions open on the token, by all applications
	MaxSessionCount uint // 0: no limit the module reports
	FreeSessions    uint // MaxSessionCount - SessionCount when both are known
	MinPINLen       uint
	MaxPINLen       uint
}

// unavailableInfo is CK_UNAVAILABLE_INFORMATION as it comes back from
// miekg/pkcs11 on a 64-bit platform.
const unavailableInfo = ^uint(0)

func tokenInfoFrom(ti pkcs11.TokenInfo) TokenInfo {
	info := TokenInfo{
		Label:         pkcs11uri.TrimPadding(ti.Label),
		Serial:        pkcs11uri.TrimPadding(ti.SerialNumber),
		Manufacturer:  pkcs11uri.TrimPadding(ti.ManufacturerID),
		Model:         pkcs11uri.TrimPadding(ti.Model),
		Initialized:   ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED != 0,
		LoginRequired: ti.Flags&pkcs11.CKF_LOGIN_REQUIRED != 0,
		PIN:           pinStatusFromFlags(ti.Flags),
		MinPINLen:     ti.MinPinLen,
		MaxPINLen:     ti.MaxPinLen,
	}
	if ti.SessionCount != unavailableInfo {
		info.SessionCount = ti.SessionCount
	}
	if ti.MaxSessionCount != unavailableInfo && ti.MaxSessionCount != 0 {
		info.MaxSessionCount = ti.MaxSessionCount
		if ti.SessionCount != unavailableInfo && ti.SessionCount <= ti.MaxSessionCount {
			info.FreeSessions = ti.MaxSessionCount - ti.SessionCount
		}
	}
	return info
}

// findToken returns the slot holding the one initialised token that sel
// matches. The caller holds the module lock.
func findToken(api p11, sel TokenSelector) (uint, pkcs11.TokenInfo, error) {
	slots, err := api.GetSlotList(true)
	if err != nil {
		return 0, pkcs11.TokenInfo{}, p11err("C_GetSlotList", err)
	}
	var (
		found  []uint
		infos  []pkcs11.TokenInfo
		serial []string
	)
	for _, s := range slots {
		ti, err := api.GetTokenInfo(s)
		if err != nil || ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 || !sel.Matches(ti.Label, ti.SerialNumber) {
			continue
		}
		found = append(found, s)
		infos = append(infos, ti)
		serial = append(serial, pkcs11uri.TrimPadding(ti.SerialNumber))
	}
	switch len(found) {
	case 0:
		return 0, pkcs11.TokenInfo{}, fmt.Errorf("%w: %s", ErrTokenNotFound, sel)
	case 1:
		return found[0], infos[0], nil
	}
	return 0, pkcs11.TokenInfo{}, fmt.Errorf("%w: %s matches serials %s; name the serial", ErrAmbiguousToken, sel, strings.Join(serial, ", "))
}

// TokenOption configures a Token.
type TokenOption func(*tokenOptions)

type tokenOptions struct {
	poolSize  int
	maxWait   time.Duration
	verifySig bool
	onPINDrop func(PINDrop)
}

// WithPoolSize sets how many sessions the token's pool may open. The
// default is four per CPU, capped by the token's maximum: a PKCS#11 call
// may block (SoftHSM locks its object files; a network HSM waits on the
// network), and a spare session keeps a CPU busy meanwhile.
func WithPoolSize(n int) TokenOption {
	return func(o *tokenOptions) { o.poolSize = n }
}

// WithMaxWait bounds how long a call waits for a free session when its
// context has no earlier deadline. Default 10 s.
func WithMaxWait(d time.Duration) TokenOption {
	return func(o *tokenOptions) { o.maxWait = d }
}

// WithVerify turns the check of every signature (RSA and ECDSA) against
// the public key before it is returned on or off (default on; it guards
// against RSA-CRT faults and any other fault of the device that yields a
// bad signature).
func WithVerify(on bool) TokenOption {
	return func(o *tokenOptions) { o.verifySig = on }
}

// Token is one token of a module, with its session pool, its kept PIN and
// its cache of key handles. It is safe for concurrent use.
type Token struct {
	m    *Module
	sel  TokenSelector
	opts tokenOptions

	label, serial string

	slotMu  sync.Mutex
	slot    uint
	slotGen uint64

	pool pool

	loginMu sync.Mutex
	pin     []byte // kept for re-login; guarded by loginMu
	// loggedOutReason says why the package dropped the kept PIN, until
	// the next login; guarded by loginMu.
	loggedOutReason string
	// loginSeq grows by one when a change of the token's login state made
	// by this package starts (C_Login, C_Logout) and by one when it ends:
	// it is odd while one is under way. A key search compares it before
	// and after to tell "no such key" from "searched while the login
	// changed".
	loginSeq atomic.Uint64

	// PIN drops waiting to be handed to opts.onPINDrop: pendingDrops is
	// guarded by dropsMu, dropsPending counts those not yet delivered,
	// deliverMu serialises deliveries.
	dropsMu      sync.Mutex
	pendingDrops []PINDrop
	dropsPending atomic.Int64
	deliverMu    sync.Mutex

	keysMu sync.RWMutex
	keys   map[string]*keyEntry

	// adminMu serialises key generation and deletion on this token, so
	// that two officers cannot create the same label at once.
	adminMu sync.Mutex

	logins        atomic.Int64 // re-logins done, for tests and metrics
	loginAttempts atomic.Int64 // C_Login calls made as the user, with any PIN
}

// Token finds the token sel names and returns it, opening no session yet.
// Asking twice for the same token returns the same *Token, with the options
// of the first call: the later call's options are not applied.
func (m *Module) Token(ctx context.Context, sel TokenSelector, opts ...TokenOption) (*Token, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if sel.Label == "" && sel.Serial == "" {
		return nil, fmt.Errorf("%w: a token needs a label or serial", ErrInvalidArgument)
	}
	o := tokenOptions{maxWait: 10 * time.Second, verifySig: true}
	for _, opt := range opts {
		opt(&o)
	}
	gen, unlock, err := m.rlock()
	if err != nil {
		return nil, err
	}
	slot, ti, err := findToken(m.api, sel)
	unlock()
	if err != nil {
		return nil, err
	}
	info := tokenInfoFrom(ti)
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, t := range m.tokens {
		if t.serial == info.Serial && t.label == info.Label {
			return t, nil
		}
	}
	size := o.poolSize
	if size <= 0 {
		size = 4 * runtime.NumCPU()
	}
	if info.MaxSessionCount > 0 && uint(size) > info.MaxSessionCount {
		size = int(info.MaxSessionCount)
	}
	t := &Token{
		m: m, sel: TokenSelector{Label: info.Label, Serial: info.Serial}, opts: o,
		label: info.Label, serial: info.Serial,
		slot: slot, slotGen: gen,
		keys: map[string]*keyEntry{},
	}
	t.pool.init(size)
	m.tokens = append(m.tokens, t)
	return t, nil
}

// Label returns the token label.
func (t *Token) Label() string { return t.label }

// Serial returns the token serial number.
func (t *Token) Serial() string { return t.serial }

// PoolSize returns how many sessions the pool may open.
func (t *Token) PoolSize() int { return t.pool.size }

// findSlotLocked returns the token's slot in the current generation,
// looking it up again by label and serial after re-initialisation. The
// caller holds the module lock (read or write).
func (t *Token) findSlotLocked() (uint, error) {
	t.slotMu.Lock()
	defer t.slotMu.Unlock()
	if t.slotGen == t.m.gen {
		return t.slot, nil
	}
	slot, _, err := findToken(t.m.api, t.sel)
	if err != nil {
		return 0, err
	}
	t.slot, t.slotGen = slot, t.m.gen
	return slot, nil
}

// dropAllSessionsLocked forgets every pooled session and cached handle
// after the library was finalized. The caller holds the module write lock,
// so no session is in use.
func (t *Token) dropAllSessionsLocked() {
	t.pool.forgetAll()
	t.forgetKeys()
}

// closeLocked closes the pool, logs out and zeroes the PIN. The caller
// holds the module write lock.
func (t *Token) closeLocked() error {
	var errs []error
	t.loginMu.Lock()
	hadPIN := t.pin != nil
	forgetPIN(t.pin)
	t.pin = nil
	t.loginMu.Unlock()
	if t.m.ready {
		for s := range t.pool.drain() {
			if hadPIN {
				_ = t.m.api.Logout(s.h) // once is enough; the rest say not logged in
				hadPIN = false
			}
			if err := t.m.api.CloseSession(s.h); err != nil && !isRV(err, pkcs11.CKR_SESSION_HANDLE_INVALID) {
				errs = append(errs, p11err("C_CloseSession", err))
			}
		}
	} else {
		t.pool.forgetAll()
	}
	t.forgetKeys()
	return errors.Join(errs...)
}

// Info returns the token's information as the module reports it now.
func (t *Token) Info(ctx context.Context) (TokenInfo, error) {
	if err := ctx.Err(); err != nil {
		return TokenInfo{}, err
	}
	gen, unlock, err := t.m.rlock()
	if err != nil {
		return TokenInfo{}, err
	}
	slot, err := t.findSlotLocked()
	if err != nil {
		unlock()
		return TokenInfo{}, err
	}
	ti, err := t.m.api.GetTokenInfo(slot)
	unlock()
	if err != nil {
		return TokenInfo{}, t.m.failed(gen, p11err("C_GetTokenInfo", err))
	}
	return tokenInfoFrom(ti), nil
}
