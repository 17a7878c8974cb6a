package main

import (
	"fmt"
	"strings"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
)

// printKeyProtection prints, for `key show`, the rest of the attributes
// that say whether a key signs and does nothing else, as signerd read them
// from the token, and why signerd refuses the key when it does.
func (a *app) printKeyProtection(k *signerv1.Key) {
	mechs := strings.Join(k.GetAllowedMechanisms(), ", ")
	if mechs == "" {
		mechs = "not restricted (the module does not support CKA_ALLOWED_MECHANISMS, or the key was made without it)"
	}
	fmt.Fprintf(a.stdout, "sig-recover: %s\nmodifiable:  %s\ncopyable:    %s\nmechanisms:  %s\n",
		yesNo(k.GetCanSignRecover()), yesNo(k.GetModifiable()), yesNo(k.GetCopyable()), mechs)
	if p := k.GetAttributeProblem(); p != "" {
		fmt.Fprintf(a.stdout, "refused:     %s\n", p)
	}
}
