// Command p11-keyattr makes, changes and reads the protection attributes of
// a key pair on a PKCS#11 token straight through PKCS#11
// (github.com/miekg/pkcs11), in a process of its own: what someone holding
// the user PIN can do to a key beside signerd. Tests use it to make a key
// outside signerd, to change its attributes under a running daemon, and to
// read the attributes back independently of the daemon.
//
// Usage:
//
//	p11-keyattr --module PATH --token-label L gen --id HEX --label L [--rsa-bits N] [ATTR=BOOL ...] < pin-file
//	p11-keyattr --module PATH --token-label L set --id HEX ATTR=BOOL ... < pin-file
//	p11-keyattr --module PATH --token-label L get --id HEX < pin-file
//	p11-keyattr --module PATH --token-label L copy --id HEX --new-id HEX [ATTR=BOOL ...] < pin-file
//	p11-keyattr --module PATH --token-label L destroy --id HEX < pin-file
//
// gen makes an EC P-256 key pair (with --rsa-bits, an RSA pair of that
// size) as signerd made them before the security review: token, private,
// sensitive, not extractable, sign and nothing else, but modifiable,
// copyable and without CKA_ALLOWED_MECHANISMS; ATTR=BOOL pairs change the
// private key template. set sets CK_BBOOL attributes of the private key
// with CKA_ID HEX. get prints the private key's attributes, one
// NAME=VALUE a line, and the public key's as public.NAME=VALUE;
// allowed_mechanisms is a comma-separated list of hex mechanism numbers.
// copy copies the key pair with C_CopyObject to CKA_ID --new-id, the
// ATTR=BOOL pairs changing the private key's copy (CKA_ALWAYS_SENSITIVE
// and CKA_NEVER_EXTRACTABLE are copied as they are). destroy destroys every
// object with CKA_ID HEX. ATTR is one of token, private, sensitive,
// extractable, sign, sign_recover, decrypt, unwrap, derive, modifiable,
// copyable, verify, encrypt, wrap.
//
// The user PIN is the first line of standard input; it is never taken from
// the command line and never printed. For SoftHSM, SOFTHSM2_CONF in the
// environment names the token directory. On error, one line goes to
// standard error and the exit status is 1.
package main

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/miekg/pkcs11"
)

// maxPINLine bounds how much of standard input is read for the PIN.
const maxPINLine = 1024

const usage = "usage: p11-keyattr --module PATH --token-label L gen|set|get|copy|destroy --id HEX [--label L] [--rsa-bits N] [--new-id HEX] [ATTR=BOOL ...] (user PIN on the first line of stdin)"

func main() {
	if err := run(os.Args[1:], os.Stdin, os.Stdout); err != nil {
		msg := strings.Join(strings.Fields(err.Error()), " ") // one line
		fmt.Fprintf(os.Stderr, "p11-keyattr: %s\n", msg)
		os.Exit(1)
	}
}

// boolAttrs names the CK_BBOOL attributes the command knows, in the order
// get prints them.
func boolAttrs() []struct {
	name string
	typ  uint
} {
	return []struct {
		name string
		typ  uint
	}{
		{"token", pkcs11.CKA_TOKEN}, {"private", pkcs11.CKA_PRIVATE},
		{"sensitive", pkcs11.CKA_SENSITIVE}, {"always_sensitive", pkcs11.CKA_ALWAYS_SENSITIVE},
		{"extractable", pkcs11.CKA_EXTRACTABLE}, {"never_extractable", pkcs11.CKA_NEVER_EXTRACTABLE},
		{"sign", pkcs11.CKA_SIGN}, {"sign_recover", pkcs11.CKA_SIGN_RECOVER},
		{"decrypt", pkcs11.CKA_DECRYPT}, {"unwrap", pkcs11.CKA_UNWRAP}, {"derive", pkcs11.CKA_DERIVE},
		{"modifiable", pkcs11.CKA_MODIFIABLE}, {"copyable", pkcs11.CKA_COPYABLE},
		{"verify", pkcs11.CKA_VERIFY}, {"encrypt", pkcs11.CKA_ENCRYPT}, {"wrap", pkcs11.CKA_WRAP},
	}
}

// command is what the command line says.
type command struct {
	module, tokenLabel string
	op                 string // gen, set, get, copy or destroy
	id                 []byte
	newID              []byte // copy
	label              string
	rsaBits            int                 // gen: an RSA key of this size; 0: EC P-256
	attrs              []*pkcs11.Attribute // ATTR=BOOL pairs
}

func parseArgs(args []string) (command, error) {
	fs := flag.NewFlagSet("p11-keyattr", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	module := fs.String("module", "", "path of the PKCS#11 module")
	tokenLabel := fs.String("token-label", "", "label of the token")
	if err := fs.Parse(args); err != nil {
		return command{}, fmt.Errorf("%w; %s", err, usage)
	}
	c := command{module: *module, tokenLabel: *tokenLabel, op: fs.Arg(0)}
	if c.module == "" || c.tokenLabel == "" {
		return command{}, fmt.Errorf("--module and --token-label are required; %s", usage)
	}
	switch c.op {
	case "gen", "set", "get", "copy", "destroy":
	default:
		return command{}, fmt.Errorf("unknown operation %q; %s", c.op, usage)
	}
	sub := flag.NewFlagSet(c.op, flag.ContinueOnError)
	sub.SetOutput(io.Discard)
	id := sub.String("id", "", "CKA_ID of the key pair, hex")
	label := sub.String("label", "", "CKA_LABEL of the new key pair (gen)")
	rsaBits := sub.Int("rsa-bits", 0, "make an RSA key pair of this size (gen)")
	newID := sub.String("new-id", "", "CKA_ID of the copy, hex (copy)")
	if err := sub.Parse(fs.Args()[1:]); err != nil {
		return command{}, fmt.Errorf("%s: %w; %s", c.op, err, usage)
	}
	var err error
	if c.id, err = hex.DecodeString(*id); err != nil || len(c.id) == 0 {
		return command{}, fmt.Errorf("%s: --id %q is not a hex key id", c.op, *id)
	}
	c.label, c.rsaBits = *label, *rsaBits
	if c.op == "gen" && c.label == "" {
		return command{}, fmt.Errorf("gen: --label is required")
	}
	if c.rsaBits < 0 || (c.rsaBits != 0 && c.op != "gen") {
		return command{}, fmt.Errorf("%s: --rsa-bits %d is not for this operation", c.op, c.rsaBits)
	}
	if c.op == "copy" {
		if c.newID, err = hex.DecodeString(*newID); err != nil || len(c.newID) == 0 {
			return command{}, fmt.Errorf("copy: --new-id %q is not a hex key id", *newID)
		}
	} else if *newID != "" {
		return command{}, fmt.Errorf("%s: --new-id is for copy", c.op)
	}
	for _, kv := range sub.Args() {
		name, value, ok := strings.Cut(kv, "=")
		b, err := strconv.ParseBool(value)
		if !ok || err != nil {
			return command{}, fmt.Errorf("%q is not ATTR=BOOL", kv)
		}
		typ, found := uint(0), false
		for _, a := range boolAttrs() {
			if a.name == name {
				typ, found = a.typ, true
			}
		}
		if !found {
			return command{}, fmt.Errorf("unknown attribute %q", name)
		}
		c.attrs = append(c.attrs, pkcs11.NewAttribute(typ, b))
	}
	if (c.op == "get" || c.op == "destroy") && len(c.attrs) > 0 {
		return command{}, fmt.Errorf("%s takes no ATTR=BOOL", c.op)
	}
	if c.op == "set" && len(c.attrs) == 0 {
		return command{}, errors.New("set needs at least one ATTR=BOOL")
	}
	return c, nil
}

// readPIN returns the first line of r, without its line ending.
func readPIN(r io.Reader) ([]byte, error) {
	line, err := bufio.NewReaderSize(io.LimitReader(r, maxPINLine), maxPINLine).ReadBytes('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("reading PIN from stdin: %w", err)
	}
	pin := bytes.TrimRight(line, "\r\n")
	if len(pin) == 0 {
		return nil, errors.New("no user PIN on the first line of stdin")
	}
	return pin, nil
}

func run(args []string, stdin io.Reader, out io.Writer) error {
	c, err := parseArgs(args)
	if err != nil {
		return err
	}
	pin, err := readPIN(stdin)
	if err != nil {
		return err
	}
	if err := c.do(string(pin), out); err != nil {
		return errors.New(strings.ReplaceAll(err.Error(), string(pin), "[redacted]"))
	}
	return nil
}

// do opens a logged-in session on the token and carries out c.
func (c command) do(pin string, out io.Writer) (err error) {
	p := pkcs11.New(c.module)
	if p == nil {
		return fmt.Errorf("cannot load %s", c.module)
	}
	defer p.Destroy()
	if err := p.Initialize(); err != nil {
		return fmt.Errorf("C_Initialize: %w", err)
	}
	defer func() { _ = p.Finalize() }()
	slots, err := p.GetSlotList(true)
	if err != nil {
		return fmt.Errorf("C_GetSlotList: %w", err)
	}
	var slot uint
	found := false
	for _, s := range slots {
		ti, err := p.GetTokenInfo(s)
		if err == nil && strings.TrimRight(ti.Label, " \x00") == c.tokenLabel {
			slot, found = s, true
		}
	}
	if !found {
		return fmt.Errorf("no token labelled %q", c.tokenLabel)
	}
	h, err := p.OpenSession(slot, pkcs11.CKF_SERIAL_SESSION|pkcs11.CKF_RW_SESSION)
	if err != nil {
		return fmt.Errorf("C_OpenSession: %w", err)
	}
	defer func() { _ = p.CloseSession(h) }()
	if err := p.Login(h, pkcs11.CKU_USER, pin); err != nil {
		return fmt.Errorf("C_Login: %w", err)
	}
	defer func() { _ = p.Logout(h) }()
	switch c.op {
	case "gen":
		return c.gen(p, h)
	case "set":
		priv, err := find(p, h, pkcs11.CKO_PRIVATE_KEY, c.id)
		if err != nil {
			return err
		}
		if err := p.SetAttributeValue(h, priv, c.attrs); err != nil {
			return fmt.Errorf("C_SetAttributeValue: %w", err)
		}
		return nil
	case "copy":
		return c.copy(p, h)
	case "destroy":
		return c.destroy(p, h)
	}
	return c.get(p, h, out)
}

// gen makes the key pair as signerd did before the review.
func (c command) gen(p *pkcs11.Ctx, h pkcs11.SessionHandle) error {
	keyType, mech := uint(pkcs11.CKK_EC), pkcs11.NewMechanism(pkcs11.CKM_EC_KEY_PAIR_GEN, nil)
	p256 := []byte{0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07}
	params := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_EC_PARAMS, p256)}
	if c.rsaBits > 0 {
		keyType, mech = pkcs11.CKK_RSA, pkcs11.NewMechanism(pkcs11.CKM_RSA_PKCS_KEY_PAIR_GEN, nil)
		params = []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_MODULUS_BITS, c.rsaBits), pkcs11.NewAttribute(pkcs11.CKA_PUBLIC_EXPONENT, []byte{1, 0, 1})}
	}
	pub := append([]*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PUBLIC_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		pkcs11.NewAttribute(pkcs11.CKA_TOKEN, true), pkcs11.NewAttribute(pkcs11.CKA_ID, c.id), pkcs11.NewAttribute(pkcs11.CKA_LABEL, c.label),
		pkcs11.NewAttribute(pkcs11.CKA_VERIFY, true),
	}, params...)
	base := map[uint]bool{
		pkcs11.CKA_TOKEN: true, pkcs11.CKA_PRIVATE: true, pkcs11.CKA_SENSITIVE: true, pkcs11.CKA_EXTRACTABLE: false,
		pkcs11.CKA_SIGN: true, pkcs11.CKA_SIGN_RECOVER: false, pkcs11.CKA_DECRYPT: false, pkcs11.CKA_UNWRAP: false, pkcs11.CKA_DERIVE: false,
	}
	for _, a := range c.attrs {
		base[a.Type] = a.Value[0] != 0
	}
	priv := []*pkcs11.Attribute{
		pkcs11.NewAttribute(pkcs11.CKA_CLASS, pkcs11.CKO_PRIVATE_KEY), pkcs11.NewAttribute(pkcs11.CKA_KEY_TYPE, keyType),
		pkcs11.NewAttribute(pkcs11.CKA_ID, c.id), pkcs11.NewAttribute(pkcs11.CKA_LABEL, c.label),
	}
	for typ, v := range base {
		priv = append(priv, pkcs11.NewAttribute(typ, v))
	}
	if _, _, err := p.GenerateKeyPair(h, []*pkcs11.Mechanism{mech}, pub, priv); err != nil {
		return fmt.Errorf("C_GenerateKeyPair: %w", err)
	}
	return nil
}

// copy copies the key pair to c.newID, changing the private key's copy by
// c.attrs: what someone holding the user PIN can do to a copyable key.
func (c command) copy(p *pkcs11.Ctx, h pkcs11.SessionHandle) error {
	for _, class := range []uint{pkcs11.CKO_PUBLIC_KEY, pkcs11.CKO_PRIVATE_KEY} {
		o, err := find(p, h, class, c.id)
		if err != nil {
			return err
		}
		tmpl := []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, c.newID)}
		if class == pkcs11.CKO_PRIVATE_KEY {
			tmpl = append(tmpl, c.attrs...)
		}
		if _, err := p.CopyObject(h, o, tmpl); err != nil {
			return fmt.Errorf("C_CopyObject (class %d): %w", class, err)
		}
	}
	return nil
}

// destroy destroys every object with CKA_ID c.id, as an officer deleting
// the key beside signerd would.
func (c command) destroy(p *pkcs11.Ctx, h pkcs11.SessionHandle) error {
	if err := p.FindObjectsInit(h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ID, c.id)}); err != nil {
		return fmt.Errorf("C_FindObjectsInit: %w", err)
	}
	hs, _, err := p.FindObjects(h, 64)
	_ = p.FindObjectsFinal(h)
	if err != nil {
		return fmt.Errorf("C_FindObjects: %w", err)
	}
	if len(hs) == 0 {
		return fmt.Errorf("no object with id %x", c.id)
	}
	for _, o := range hs {
		if err := p.DestroyObject(h, o); err != nil {
			return fmt.Errorf("C_DestroyObject: %w", err)
		}
	}
	return nil
}

// get prints the attributes of the private and the public key.
func (c command) get(p *pkcs11.Ctx, h pkcs11.SessionHandle, out io.Writer) error {
	for _, obj := range []struct {
		class  uint
		prefix string
	}{{pkcs11.CKO_PRIVATE_KEY, ""}, {pkcs11.CKO_PUBLIC_KEY, "public."}} {
		o, err := find(p, h, obj.class, c.id)
		if err != nil {
			return err
		}
		for _, a := range boolAttrs() {
			v, err := p.GetAttributeValue(h, o, []*pkcs11.Attribute{pkcs11.NewAttribute(a.typ, nil)})
			if err != nil {
				continue // not an attribute of this class
			}
			fmt.Fprintf(out, "%s%s=%t\n", obj.prefix, a.name, len(v[0].Value) == 1 && v[0].Value[0] != 0)
		}
		if obj.class != pkcs11.CKO_PRIVATE_KEY {
			continue
		}
		v, err := p.GetAttributeValue(h, o, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_ALLOWED_MECHANISMS, nil)})
		if err != nil {
			return fmt.Errorf("C_GetAttributeValue(CKA_ALLOWED_MECHANISMS): %w", err)
		}
		n := len(pkcs11.NewAttribute(0, uint(0)).Value)
		var mechs []string
		for b := v[0].Value; len(b) >= n; b = b[n:] {
			var m uint64
			for i := n - 1; i >= 0; i-- {
				m = m<<8 | uint64(b[i])
			}
			mechs = append(mechs, fmt.Sprintf("%#x", m))
		}
		fmt.Fprintf(out, "allowed_mechanisms=%s\n", strings.Join(mechs, ","))
	}
	return nil
}

// find returns the one object of class with CKA_ID id.
func find(p *pkcs11.Ctx, h pkcs11.SessionHandle, class uint, id []byte) (pkcs11.ObjectHandle, error) {
	if err := p.FindObjectsInit(h, []*pkcs11.Attribute{pkcs11.NewAttribute(pkcs11.CKA_CLASS, class), pkcs11.NewAttribute(pkcs11.CKA_ID, id)}); err != nil {
		return 0, fmt.Errorf("C_FindObjectsInit: %w", err)
	}
	hs, _, err := p.FindObjects(h, 2)
	_ = p.FindObjectsFinal(h)
	if err != nil {
		return 0, fmt.Errorf("C_FindObjects: %w", err)
	}
	if len(hs) != 1 {
		return 0, fmt.Errorf("%d objects of class %d with id %x; want one", len(hs), class, id)
	}
	return hs[0], nil
}
