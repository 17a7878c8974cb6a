package hsm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/pkcs11"
)

// Module is one loaded PKCS#11 library. It is safe for concurrent use.
//
// A module is loaded and initialised once per process (C_Initialize with OS
// locking) and finalized by Close. Every PKCS#11 call holds mu for reading;
// re-initialisation after a device or library failure holds it for writing,
// so no call is ever made into a library being finalized.
type Module struct {
	path string
	opts moduleOptions
	log  *slog.Logger

	// recoverMu serialises recovery attempts.
	recoverMu sync.Mutex
	// recovering is true while a recovery waits for mu or holds it for
	// writing: calls then fail at once instead of queueing behind it,
	// since it waits for every call in the library to return, and a
	// library call may never return (p11-kit's client, when its server
	// dies under several threads, can leave a call blocked).
	recovering atomic.Bool

	mu          sync.RWMutex
	api         p11
	gen         uint64 // incremented at each successful C_Initialize
	ready       bool   // the library is initialised
	closed      bool
	downUntil   time.Time // no recovery attempt before this time
	downErr     error     // why the module is down
	downCause   error     // the failure that took it down, for downErr
	backoff     time.Duration
	tokens      []*Token
	libraryInfo pkcs11.Info
}

type moduleOptions struct {
	logger     *slog.Logger
	minBackoff time.Duration
	maxBackoff time.Duration
	now        func() time.Time
	wrap       func(p11) p11
}

// ModuleOption configures OpenModule.
type ModuleOption func(*moduleOptions)

// WithLogger sets the logger for recovery events. The default discards.
func WithLogger(l *slog.Logger) ModuleOption {
	return func(o *moduleOptions) { o.logger = l }
}

// WithBackoff sets the first and the longest wait between attempts to
// initialise a failed module again. Defaults: 100 ms and 2 s, so that
// signing resumes within about 2 s of an HSM's return, however long it was
// gone (a network HSM restarted, a cable put back).
func WithBackoff(first, longest time.Duration) ModuleOption {
	return func(o *moduleOptions) { o.minBackoff, o.maxBackoff = first, longest }
}

// withClock replaces time.Now (tests).
func withClock(now func() time.Time) ModuleOption {
	return func(o *moduleOptions) { o.now = now }
}

// withWrapper puts a wrapper around the PKCS#11 calls (fault-injection
// tests).
func withWrapper(w func(p11) p11) ModuleOption {
	return func(o *moduleOptions) { o.wrap = w }
}

// OpenModule loads the PKCS#11 library at path and initialises it. The
// context bounds nothing inside the library (PKCS#11 calls cannot be
// cancelled) but is checked before the work starts.
func OpenModule(ctx context.Context, path string, opts ...ModuleOption) (*Module, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	o := moduleOptions{minBackoff: 100 * time.Millisecond, maxBackoff: 2 * time.Second, now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	if o.logger == nil {
		o.logger = slog.New(slog.DiscardHandler)
	}
	if path == "" {
		return nil, fmt.Errorf("%w: no module path given", ErrModuleLoad)
	}
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrModuleLoad, path, err)
	}
	if st.IsDir() {
		return nil, fmt.Errorf("%w: %s is a directory", ErrModuleLoad, path)
	}
	ctx11 := pkcs11.New(path)
	if ctx11 == nil {
		return nil, fmt.Errorf("%w: %s: dlopen failed or C_GetFunctionList missing", ErrModuleLoad, path)
	}
	var api p11 = ctx11
	if o.wrap != nil {
		api = o.wrap(api)
	}
	m := &Module{path: path, opts: o, log: o.logger.With("module", path), api: api}
	if err := m.initialize(); err != nil {
		api.Destroy()
		if isRV(err, pkcs11.CKR_CRYPTOKI_ALREADY_INITIALIZED) {
			return nil, fmt.Errorf("%w: %s is already initialised in this process; open it once and share the Module: %w", ErrModuleLoad, path, err)
		}
		return nil, fmt.Errorf("%w: %s: %w", ErrModuleLoad, path, err)
	}
	return m, nil
}

// initialize calls C_Initialize and records the library information. The
// caller holds mu for writing, or is OpenModule.
func (m *Module) initialize() error {
	if err := m.api.Initialize(pkcs11.InitializeWithFlags(pkcs11.CKF_OS_LOCKING_OK)); err != nil {
		return p11err("C_Initialize", err)
	}
	info, err := m.api.GetInfo()
	if err != nil {
		_ = m.api.Finalize()
		return p11err("C_GetInfo", err)
	}
	m.libraryInfo = info
	m.gen++
	m.ready = true
	return nil
}

// Path returns the library path.
func (m *Module) Path() string { return m.path }

// ModuleInfo describes a loaded library.
type ModuleInfo struct {
	Path            string
	Manufacturer    string
	Description     string
	LibraryVersion  string
	CryptokiVersion string
	Ready           bool   // initialised and usable
	Down            string // why it is not ready, if it is not
	Generation      uint64 // how many times it has been initialised
}

// Info returns the library information.
func (m *Module) Info() ModuleInfo {
	if err := m.readLock(); err != nil {
		// A recovery holds the module: it is not ready, and what the
		// library said of itself is not read meanwhile.
		return ModuleInfo{Path: m.path, Down: err.Error()}
	}
	defer m.mu.RUnlock()
	mi := ModuleInfo{
		Path:            m.path,
		Manufacturer:    m.libraryInfo.ManufacturerID,
		Description:     m.libraryInfo.LibraryDescription,
		LibraryVersion:  fmt.Sprintf("%d.%d", m.libraryInfo.LibraryVersion.Major, m.libraryInfo.LibraryVersion.Minor),
		CryptokiVersion: fmt.Sprintf("%d.%d", m.libraryInfo.CryptokiVersion.Major, m.libraryInfo.CryptokiVersion.Minor),
		Ready:           m.ready && !m.closed,
		Generation:      m.gen,
	}
	if m.downErr != nil {
		mi.Down = m.downErr.Error()
	}
	return mi
}

// Check reports whether the module can be used now. When it is down and
// its backoff has passed, Check first tries to initialise it again, as a
// call would: a readiness probe then sees an HSM that came back without
// waiting for traffic that a not-ready daemon may never get.
func (m *Module) Check() error {
	_, unlock, err := m.rlock()
	if err != nil {
		return err
	}
	unlock()
	return nil
}

// SlotInfo describes one slot and the token in it.
type SlotInfo struct {
	Description  string
	Manufacturer string
	TokenPresent bool
	Token        TokenInfo // zero when no token is present
}

// Slots lists the module's slots with a token present, with their token
// information. Slot numbers are not reported: they change between runs and
// tokens are found by label or serial.
func (m *Module) Slots(ctx context.Context) ([]SlotInfo, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	gen, unlock, err := m.rlock()
	if err != nil {
		return nil, err
	}
	slots, err := m.api.GetSlotList(true)
	if err != nil {
		unlock()
		return nil, m.failed(gen, p11err("C_GetSlotList", err))
	}
	var out []SlotInfo
	for _, s := range slots {
		si, err := m.api.GetSlotInfo(s)
		if err != nil {
			continue
		}
		info := SlotInfo{Description: si.SlotDescription, Manufacturer: si.ManufacturerID, TokenPresent: si.Flags&pkcs11.CKF_TOKEN_PRESENT != 0}
		if ti, err := m.api.GetTokenInfo(s); err == nil {
			info.Token = tokenInfoFrom(ti)
		}
		out = append(out, info)
	}
	unlock()
	return out, nil
}

// rlock takes mu for reading and checks that the module can be used. On
// success it returns the generation seen and the function that gives the
// read lock back, which the caller must call once, before anything that
// may take mu for writing (failed). When the library is not initialised
// and the backoff has passed, it tries to initialise it again first.
func (m *Module) rlock() (gen uint64, unlock func(), err error) {
	for attempt := 0; ; attempt++ {
		if err := m.readLock(); err != nil {
			return 0, nil, err
		}
		if m.closed {
			m.mu.RUnlock()
			return 0, nil, fmt.Errorf("module %s: %w", m.path, ErrClosed)
		}
		if m.ready {
			return m.gen, m.mu.RUnlock, nil
		}
		gen, until, why := m.gen, m.downUntil, m.downErr
		m.mu.RUnlock()
		if attempt > 0 || m.opts.now().Before(until) {
			return 0, nil, fmt.Errorf("%w: module %s: %w", ErrUnavailable, m.path, why)
		}
		if err := m.reinitialize(gen, why); err != nil {
			return 0, nil, err
		}
	}
}

// readLock takes mu for reading, unless a recovery waits for it or holds
// it: then it fails with ErrUnavailable at once rather than wait behind a
// recovery that may itself wait for a call that never returns. Other
// writers (Close, Token) hold mu briefly and are waited for.
func (m *Module) readLock() error {
	for {
		if m.mu.TryRLock() {
			return nil
		}
		if m.recovering.Load() {
			return fmt.Errorf("%w: module %s is being initialised again", ErrUnavailable, m.path)
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// failed is called, without mu held, with an error from a call made under
// generation gen. For library and device errors it finalizes and
// initialises the module again and returns an error saying so; the caller
// may retry once when the returned error is errRetry.
func (m *Module) failed(gen uint64, err error) error {
	if classify(err) != classModule {
		return err
	}
	if rerr := m.reinitialize(gen, err); rerr != nil {
		return rerr
	}
	return fmt.Errorf("%w (the module was initialised again; try again): %w", errRetry, err)
}

// errRetry marks an error after which the module recovered and the
// operation can be tried again once.
var errRetry = errors.New("hsm: recovered")

// reinitialize finalizes the library and initialises it again, unless
// another goroutine already did so since generation gen was seen. On
// failure the module is marked down with exponential backoff and the error
// wraps ErrUnavailable.
func (m *Module) reinitialize(gen uint64, cause error) error {
	m.recoverMu.Lock()
	defer m.recoverMu.Unlock()
	m.recovering.Store(true)
	defer m.recovering.Store(false)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("module %s: %w", m.path, ErrClosed)
	}
	if m.gen != gen && m.ready {
		return nil // someone else recovered it
	}
	if now := m.opts.now(); now.Before(m.downUntil) {
		return fmt.Errorf("%w: module %s: %w", ErrUnavailable, m.path, m.downErr)
	}
	m.log.Warn("PKCS#11 module failed; initialising it again", "cause", cause.Error())
	if m.ready {
		_ = m.api.Finalize()
		m.ready = false
	}
	for _, t := range m.tokens {
		t.dropAllSessionsLocked()
	}
	err := m.initialize()
	if err == nil {
		// The token may still be absent; check now so that a removed
		// device counts as down and backs off.
		for _, t := range m.tokens {
			if _, ferr := t.findSlotLocked(); ferr != nil {
				err = ferr
				_ = m.api.Finalize()
				m.ready = false
				break
			}
		}
	}
	if err != nil {
		if m.backoff == 0 {
			m.backoff = m.opts.minBackoff
		} else {
			m.backoff = min(2*m.backoff, m.opts.maxBackoff)
		}
		m.downUntil = m.opts.now().Add(m.backoff)
		// The first failure stays the cause: each later attempt's cause
		// is the downErr before it, which would nest without end.
		if m.downCause == nil {
			m.downCause = cause
		}
		m.downErr = fmt.Errorf("%w (after %w)", err, m.downCause)
		m.log.Error("PKCS#11 module still failing", "error", err.Error(), "retry_in", m.backoff.String())
		return fmt.Errorf("%w: module %s: %w", ErrUnavailable, m.path, m.downErr)
	}
	m.backoff, m.downUntil, m.downErr, m.downCause = 0, time.Time{}, nil, nil
	m.log.Info("PKCS#11 module initialised again", "generation", m.gen)
	return nil
}

// Close logs out every token, zeroes the kept PINs, closes all sessions,
// finalizes the library and unloads it. Calls made after Close fail with
// ErrClosed.
func (m *Module) Close() error {
	m.recoverMu.Lock()
	defer m.recoverMu.Unlock()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	var errs []error
	for _, t := range m.tokens {
		if err := t.closeLocked(); err != nil {
			errs = append(errs, err)
		}
	}
	if m.ready {
		if err := m.api.Finalize(); err != nil {
			errs = append(errs, p11err("C_Finalize", err))
		}
	}
	m.api.Destroy()
	m.ready, m.closed = false, true
	return errors.Join(errs...)
}
