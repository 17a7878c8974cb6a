package hsm

import (
	"context"
	"fmt"

	"github.com/miekg/pkcs11"

	"github.com/hsmsigner/hsmsigner/hsm/pkcs11uri"
)

// InitToken initialises the first uninitialised token of the module with
// label, sets its SO PIN and user PIN, and returns its information. It is
// meant for SoftHSM and development; a hardware HSM is initialised with
// its vendor's tools.
func (m *Module) InitToken(ctx context.Context, label string, soPIN, userPIN []byte) (TokenInfo, error) {
	if err := ctx.Err(); err != nil {
		return TokenInfo{}, err
	}
	if label == "" || len(label) > 32 {
		return TokenInfo{}, fmt.Errorf("%w: a token label has 1 to 32 bytes", ErrInvalidArgument)
	}
	if len(soPIN) == 0 || len(userPIN) == 0 {
		return TokenInfo{}, fmt.Errorf("%w: empty PIN", ErrInvalidArgument)
	}
	_, unlock, err := m.rlock()
	if err != nil {
		return TokenInfo{}, err
	}
	defer unlock()
	slots, err := m.api.GetSlotList(true)
	if err != nil {
		return TokenInfo{}, p11err("C_GetSlotList", err)
	}
	free, found := uint(0), false
	known := map[string]bool{}
	for _, s := range slots {
		ti, err := m.api.GetTokenInfo(s)
		if err != nil {
			continue
		}
		if ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 {
			if !found {
				free, found = s, true
			}
			continue
		}
		known[pkcs11uri.TrimPadding(ti.SerialNumber)] = true
	}
	if !found {
		return TokenInfo{}, fmt.Errorf("%w: no uninitialised token in module %s", ErrTokenNotFound, m.path)
	}
	if err := m.api.InitToken(free, pinString(soPIN), label); err != nil {
		return TokenInfo{}, p11err("C_InitToken", err)
	}
	// SoftHSM moves a token to a new slot once it is initialised: find it
	// again by label among serials not seen before.
	slots, err = m.api.GetSlotList(true)
	if err != nil {
		return TokenInfo{}, p11err("C_GetSlotList", err)
	}
	for _, s := range slots {
		ti, err := m.api.GetTokenInfo(s)
		if err != nil || ti.Flags&pkcs11.CKF_TOKEN_INITIALIZED == 0 || known[pkcs11uri.TrimPadding(ti.SerialNumber)] ||
			pkcs11uri.TrimPadding(ti.Label) != label {
			continue
		}
		h, err := m.api.OpenSession(s, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
		if err != nil {
			return TokenInfo{}, p11err("C_OpenSession", err)
		}
		defer func() { _ = m.api.CloseSession(h) }()
		if err := m.api.Login(h, pkcs11.CKU_SO, pinString(soPIN)); err != nil {
			return TokenInfo{}, p11err("C_Login as SO", err)
		}
		defer func() { _ = m.api.Logout(h) }()
		if err := m.api.InitPIN(h, pinString(userPIN)); err != nil {
			return TokenInfo{}, p11err("C_InitPIN", err)
		}
		ti, err = m.api.GetTokenInfo(s)
		if err != nil {
			return TokenInfo{}, p11err("C_GetTokenInfo", err)
		}
		return tokenInfoFrom(ti), nil
	}
	return TokenInfo{}, fmt.Errorf("%w: token %q vanished after C_InitToken", ErrTokenNotFound, label)
}
