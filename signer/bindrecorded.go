package signer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/hsmsigner/hsmsigner/signer/audit"
	"github.com/hsmsigner/hsmsigner/signer/state"
)

// OpKeyBind is the audit op of the line written when signerd binds, at
// start-up, a sign key recorded by a release before bindings were to the
// members its recorded certificates and requests name.
const OpKeyBind = "key.bind"

// bindRecorded binds each recorded sign key that is bound to no member
// but whose certificates or requests name members (a key recorded by a
// release before bindings were) to every member they name, as a request
// made now would have bound it: from then on the binding outlives its
// certificates and requests, and only clients allowed every one of its
// members may sign with it. Each key is bound in its own commit, then
// audited (op key.bind, one line per key) and logged. The member is the
// one each record names, as GenerateCSR and ImportCert recorded it.
//
// An error reading or writing the state, or writing an audit line, is
// returned: the daemon does not start with such a key left unbound or
// bound unaudited.
func (s *Service) bindRecorded(ctx context.Context) error {
	var todo []state.KeyRecord
	members := map[string][]string{} // token serial + "/" + key id → members its records name
	err := s.store.View(ctx, func(tx *state.Tx) error {
		keys, err := tx.ListKeys()
		if err != nil {
			return err
		}
		for _, k := range keys {
			if k.Usage != state.UsageSign || k.Member != "" {
				continue
			}
			named, err := keyMembers(tx, k)
			if err != nil {
				return err
			}
			if len(named) > 0 {
				todo = append(todo, k)
				members[k.Token+"/"+k.ID] = slices.Sorted(slices.Values(named))
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("reading the keys recorded before bindings: %w", err)
	}
	var errs []error
	for _, k := range todo {
		named := members[k.Token+"/"+k.ID]
		if err := s.store.BindKeyMembers(ctx, k.Token, k.ID, named); err != nil {
			errs = append(errs, fmt.Errorf("binding key %s of token %s to %s: %w", k.ID, k.Token, strings.Join(named, ", "), err))
			continue
		}
		token := k.Token
		if t := s.tokenBySerial(k.Token); t != nil {
			token = t.name
		}
		detail := fmt.Sprintf("member=%q: recorded before bindings were; bound to the member its certificates and requests name", named[0])
		if len(named) > 1 {
			detail = fmt.Sprintf("members=%q: recorded before bindings were; bound to every member its certificates and requests name (a client must be allowed all of them)", strings.Join(named, ","))
		}
		s.log.Warn("key recorded before bindings bound to its members", "token", token, "key", k.ID, "members", strings.Join(named, ","))
		if err := s.auditSelf(ctx, audit.Record{Op: OpKeyBind, Token: token, Key: k.ID, Detail: detail}); err != nil {
			errs = append(errs, fmt.Errorf("key %s bound to %s, but not audited: %w", k.ID, strings.Join(named, ", "), err))
		}
	}
	if len(todo) > 0 {
		s.forgetKeyRefs()
	}
	return errors.Join(errs...)
}
