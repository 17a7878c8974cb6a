package merkle_test

import (
	"bytes"
	"crypto"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"go/parser"
	"go/token"
	"math"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/hsmsigner/hsmsigner/signer/merkle"
)

// ---------------------------------------------------------------------------
// Independent reference: RFC 6962 section 2.1 written as literally as
// possible, recursive, with its own hashing. It shares no code with the
// package under test.
// ---------------------------------------------------------------------------

func refLeaf(d []byte) [32]byte {
	return sha256.Sum256(append([]byte{0x00}, d...))
}

func refNode(l, r [32]byte) [32]byte {
	b := append([]byte{0x01}, l[:]...)
	return sha256.Sum256(append(b, r[:]...))
}

// refSplit is k, the largest power of two smaller than n (n > 1).
func refSplit(n int) int {
	k := 1
	for k*2 < n {
		k *= 2
	}
	return k
}

// refMTH is MTH(D[n]) for n >= 1.
func refMTH(d [][]byte) [32]byte {
	if len(d) == 1 {
		return refLeaf(d[0])
	}
	k := refSplit(len(d))
	return refNode(refMTH(d[:k]), refMTH(d[k:]))
}

// refPath is PATH(m, D[n]) of RFC 6962 section 2.1.1.
func refPath(m int, d [][]byte) [][32]byte {
	if len(d) == 1 {
		return nil
	}
	k := refSplit(len(d))
	if m < k {
		return append(refPath(m, d[:k]), refMTH(d[k:]))
	}
	return append(refPath(m-k, d[k:]), refMTH(d[:k]))
}

// refShape is the shape of PATH(m, D[n]): for each element, leaf end first,
// whether the sibling is on the left.
func refShape(m, n int) []bool {
	if n == 1 {
		return nil
	}
	k := refSplit(n)
	if m < k {
		return append(refShape(m, k), false)
	}
	return append(refShape(m-k, n-k), true)
}

// ---------------------------------------------------------------------------
// Certificate Transparency reference data (certificate-transparency
// cpp/merkletree/merkle_tree_test.cc, also transparency-dev/merkle testonly).
// ---------------------------------------------------------------------------

var ctLeaves = []string{
	"", "00", "10", "2021", "3031", "40414243",
	"5051525354555657", "606162636465666768696a6b6c6d6e6f",
}

// ctRoots[n-1] is the root of the first n leaves.
var ctRoots = []string{
	"6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
	"fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
	"aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
	"d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
	"4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
	"76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
	"ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
	"5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
}

// ctPaths are the published audit paths (0-based leaf index).
var ctPaths = []struct {
	index, size int
	path        []string
}{
	{0, 1, nil},
	{0, 8, []string{
		"96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
		"5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
		"6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
	}},
	{5, 8, []string{
		"bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
		"ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
		"d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
	}},
	{2, 3, []string{
		"fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
	}},
	{1, 5, []string{
		"6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
		"5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
		"bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
	}},
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func unhexHash(t testing.TB, s string) merkle.Hash {
	t.Helper()
	h, err := merkle.ParseHash(unhex(t, s))
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func ctLeafBytes(t testing.TB) [][]byte {
	t.Helper()
	out := make([][]byte, len(ctLeaves))
	for i, s := range ctLeaves {
		out[i] = unhex(t, s)
	}
	return out
}

// testLeaves returns n distinct leaves of lengths 0..n-1, so that both short
// digests and leaves longer than two hashes are covered.
func testLeaves(n int) [][]byte {
	out := make([][]byte, n)
	for i := range out {
		out[i] = bytes.Repeat([]byte{byte(i*7 + 1)}, i)
	}
	return out
}

func mustTree(t testing.TB, leaves [][]byte) *merkle.Tree {
	t.Helper()
	tr, err := merkle.New(leaves)
	if err != nil {
		t.Fatalf("New(%d leaves): %v", len(leaves), err)
	}
	return tr
}

func mustProof(t testing.TB, tr *merkle.Tree, i int) []merkle.Hash {
	t.Helper()
	p, err := tr.Proof(i)
	if err != nil {
		t.Fatalf("Proof(%d) of %d: %v", i, tr.Size(), err)
	}
	return p
}

func asRef(p []merkle.Hash) [][32]byte {
	out := make([][32]byte, len(p))
	for i, h := range p {
		out[i] = h
	}
	return out
}

func TestHashPrefixes(t *testing.T) {
	// SHA-256(0x00) is the leaf hash of the empty leaf (RFC 6962 vector).
	if got := merkle.LeafHash(nil).String(); got != ctRoots[0] {
		t.Errorf("LeafHash(empty) = %s, want %s", got, ctRoots[0])
	}
	for _, n := range []int{0, 1, 31, 32, 63, 64, 65, 1000} {
		leaf := bytes.Repeat([]byte{0xa5}, n)
		if got, want := merkle.LeafHash(leaf), refLeaf(leaf); got != merkle.Hash(want) {
			t.Errorf("LeafHash(%d bytes) = %x, want %x", n, got, want)
		}
	}
	l, r := refLeaf([]byte("l")), refLeaf([]byte("r"))
	if got, want := merkle.NodeHash(l, r), refNode(l, r); got != merkle.Hash(want) {
		t.Errorf("NodeHash = %x, want %x", got, want)
	}
	if merkle.NodeHash(l, r) == merkle.NodeHash(r, l) {
		t.Error("NodeHash is symmetric")
	}
}

func TestReferenceRoots(t *testing.T) {
	leaves := ctLeafBytes(t)
	for n := 1; n <= len(leaves); n++ {
		t.Run(strconv.Itoa(n), func(t *testing.T) {
			want := ctRoots[n-1]
			// The published literal and the independent recursion agree.
			if ref := hex.EncodeToString(func() []byte { h := refMTH(leaves[:n]); return h[:] }()); ref != want {
				t.Fatalf("reference MTH of %d leaves = %s, published %s", n, ref, want)
			}
			tr := mustTree(t, leaves[:n])
			if got := tr.Root().String(); got != want {
				t.Errorf("Root of %d leaves = %s, want %s", n, got, want)
			}
			if tr.Size() != n {
				t.Errorf("Size = %d, want %d", tr.Size(), n)
			}
		})
	}
}

func TestReferenceProofs(t *testing.T) {
	leaves := ctLeafBytes(t)
	for _, v := range ctPaths {
		t.Run(fmt.Sprintf("%d_of_%d", v.index, v.size), func(t *testing.T) {
			want := make([]merkle.Hash, len(v.path))
			for i, s := range v.path {
				want[i] = unhexHash(t, s)
			}
			if ref := refPath(v.index, leaves[:v.size]); !slices.Equal(ref, asRef(want)) {
				t.Fatalf("reference PATH = %x, published %x", ref, want)
			}
			tr := mustTree(t, leaves[:v.size])
			got := mustProof(t, tr, v.index)
			if !slices.Equal(got, want) {
				t.Errorf("Proof = %x, want %x", got, want)
			}
			root := unhexHash(t, ctRoots[v.size-1])
			if err := merkle.VerifyProof(leaves[v.index], v.index, v.size, want, root); err != nil {
				t.Errorf("VerifyProof of the published path: %v", err)
			}
		})
	}
}

// TestOddSizesAreNotPadded guards against the classic bug of duplicating the
// last node of an odd level (Bitcoin's CVE-2012-2459): with it, [a b c] and
// [a b c c] would share a root.
func TestOddSizesAreNotPadded(t *testing.T) {
	a, b, c := []byte("a"), []byte("b"), []byte("c")
	three := mustTree(t, [][]byte{a, b, c}).Root()
	four := mustTree(t, [][]byte{a, b, c, c}).Root()
	if three == four {
		t.Fatal("[a b c] and [a b c c] have the same root")
	}
	la, lb, lc := merkle.LeafHash(a), merkle.LeafHash(b), merkle.LeafHash(c)
	if want := merkle.NodeHash(merkle.NodeHash(la, lb), lc); three != want {
		t.Errorf("root of [a b c] = %s, want NODE(NODE(a,b), c) = %s", three, want)
	}
	if dup := merkle.NodeHash(merkle.NodeHash(la, lb), merkle.NodeHash(lc, lc)); three == dup {
		t.Error("root of [a b c] is the padded NODE(NODE(a,b), NODE(c,c))")
	}
}

func TestTreeMatchesReference(t *testing.T) {
	for n := 1; n <= 70; n++ {
		leaves := testLeaves(n)
		tr := mustTree(t, leaves)
		if got, want := tr.Root(), refMTH(leaves); got != merkle.Hash(want) {
			t.Errorf("size %d: Root = %x, reference %x", n, got, want)
		}
		for i := 0; i < n; i++ {
			if got, want := mustProof(t, tr, i), refPath(i, leaves); !slices.Equal(asRef(got), want) {
				t.Errorf("size %d leaf %d: Proof = %x, reference %x", n, i, got, want)
			}
		}
	}
}

func flipBit(h merkle.Hash, bit int) merkle.Hash {
	h[bit/8] ^= 1 << (bit % 8)
	return h
}

// expectProofError asserts that err is a verification failure.
func expectProofError(t *testing.T, err error, what string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: verified", what)
	} else if !errors.Is(err, merkle.ErrProof) {
		t.Errorf("%s: error %v does not wrap ErrProof", what, err)
	}
}

func TestVerifyProofEverySizeAndIndex(t *testing.T) {
	for n := 1; n <= 70; n++ {
		leaves := testLeaves(n)
		tr := mustTree(t, leaves)
		root := tr.Root()
		for i := 0; i < n; i++ {
			proof := mustProof(t, tr, i)
			ctx := fmt.Sprintf("size %d leaf %d", n, i)

			if err := merkle.VerifyProof(leaves[i], i, n, proof, root); err != nil {
				t.Fatalf("%s: %v", ctx, err)
			}
			if got, err := merkle.RootFromProof(leaves[i], i, n, proof); err != nil || got != root {
				t.Fatalf("%s: RootFromProof = %s, %v; want %s", ctx, got, err, root)
			}

			// Wrong root.
			expectProofError(t, merkle.VerifyProof(leaves[i], i, n, proof, flipBit(root, 7)), ctx+" wrong root")

			// Wrong leaf: another leaf, the leaf changed, its leaf hash.
			wrongLeaves := [][]byte{append(slices.Clone(leaves[i]), 0), func() []byte { h := merkle.LeafHash(leaves[i]); return h[:] }()}
			if len(leaves[i]) > 0 {
				changed := slices.Clone(leaves[i])
				changed[0] ^= 1
				wrongLeaves = append(wrongLeaves, changed, leaves[i][1:])
			}
			if n > 1 {
				wrongLeaves = append(wrongLeaves, leaves[(i+1)%n])
			}
			for k, wl := range wrongLeaves {
				expectProofError(t, merkle.VerifyProof(wl, i, n, proof, root), fmt.Sprintf("%s wrong leaf #%d", ctx, k))
			}

			// Wrong index: every other index in the tree, and outside it.
			for j := -1; j <= n; j++ {
				if j != i {
					expectProofError(t, merkle.VerifyProof(leaves[i], j, n, proof, root), fmt.Sprintf("%s as index %d", ctx, j))
				}
			}
			for _, j := range []int{n, n + 1, -1, math.MaxInt, math.MinInt} {
				err := merkle.VerifyProof(leaves[i], j, n, proof, root)
				if !errors.Is(err, merkle.ErrProof) || !errors.Is(err, merkle.ErrIndex) {
					t.Errorf("%s as index %d: %v, want ErrProof and ErrIndex", ctx, j, err)
				}
			}

			// Wrong size. An RFC 6962 audit path fixes the leaf's position,
			// not the tree's size: a size whose path for i has the same
			// shape is indistinguishable and must verify; every other size
			// must fail. Doubling or halving the size (CT's "wrong tree
			// height" probes) always changes the shape.
			shape := refShape(i, n)
			for m := -1; m <= 2*n+2; m++ {
				if m == n {
					continue
				}
				err := merkle.VerifyProof(leaves[i], i, m, proof, root)
				if m > i && slices.Equal(refShape(i, m), shape) {
					if err != nil {
						t.Errorf("%s as size %d (same path shape): %v", ctx, m, err)
					}
					if m == 2*n || m == n/2 {
						t.Errorf("%s: size %d has the same path shape", ctx, m)
					}
					continue
				}
				expectProofError(t, err, fmt.Sprintf("%s as size %d", ctx, m))
			}
			expectProofError(t, merkle.VerifyProof(leaves[i], i, math.MaxInt, proof, root), ctx+" as size MaxInt")
			expectProofError(t, merkle.VerifyProof(leaves[i], i, math.MinInt, proof, root), ctx+" as size MinInt")

			// A flipped bit in any element.
			for k := range proof {
				for _, bit := range []int{0, 255, (k*37 + i) % 256} {
					bad := slices.Clone(proof)
					bad[k] = flipBit(bad[k], bit)
					expectProofError(t, merkle.VerifyProof(leaves[i], i, n, bad, root), fmt.Sprintf("%s bit %d of element %d", ctx, bit, k))
				}
			}

			// Truncated, extended, reordered.
			var changed [][]merkle.Hash
			if len(proof) > 0 {
				changed = append(changed, proof[:len(proof)-1], proof[1:])
			}
			if len(proof) > 1 {
				sw := slices.Clone(proof)
				sw[0], sw[1] = sw[1], sw[0]
				if !slices.Equal(sw, proof) {
					changed = append(changed, sw)
				}
			}
			changed = append(changed,
				append(slices.Clone(proof), root),
				append(slices.Clone(proof), merkle.Hash{}),
				append([]merkle.Hash{{}}, proof...),
				append([]merkle.Hash{merkle.LeafHash(leaves[i])}, proof...),
			)
			for k, p := range changed {
				expectProofError(t, merkle.VerifyProof(leaves[i], i, n, p, root), fmt.Sprintf("%s changed path #%d (%d hashes)", ctx, k, len(p)))
			}
		}
	}
}

// TestSecondPreimage presents interior nodes as leaves. Without the 0x00 and
// 0x01 prefixes the forgeries below would verify.
func TestSecondPreimage(t *testing.T) {
	leaves := testLeaves(4)
	tr := mustTree(t, leaves)
	root := tr.Root()
	l := make([]merkle.Hash, 4)
	for i := range l {
		l[i] = merkle.LeafHash(leaves[i])
	}
	n01, n23 := merkle.NodeHash(l[0], l[1]), merkle.NodeHash(l[2], l[3])
	if merkle.NodeHash(n01, n23) != root {
		t.Fatal("root is not NODE(n01, n23)")
	}
	// The forged leaf "left || right" of node n01, claimed as leaf 0 of a
	// 2-leaf tree whose other leaf is n23.
	concat := append(slices.Clone(l[0][:]), l[1][:]...)

	cases := []struct {
		name  string
		leaf  []byte
		index int
		size  int
		proof []merkle.Hash
	}{
		{"children of n01 as leaf 0 of 2", concat, 0, 2, []merkle.Hash{n23}},
		{"children of n23 as leaf 1 of 2", append(slices.Clone(l[2][:]), l[3][:]...), 1, 2, []merkle.Hash{n01}},
		{"n01 as leaf 0 of 2", n01[:], 0, 2, []merkle.Hash{n23}},
		{"n23 as leaf 1 of 2", n23[:], 1, 2, []merkle.Hash{n01}},
		{"0x01 || children of n01 as leaf 0 of 2", append([]byte{0x01}, concat...), 0, 2, []merkle.Hash{n23}},
		{"root as the only leaf", root[:], 0, 1, nil},
		{"leaf hash 0 as leaf 0 of 4", l[0][:], 0, 4, mustProof(t, tr, 0)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			expectProofError(t, merkle.VerifyProof(c.leaf, c.index, c.size, c.proof, root), c.name)
		})
	}

	// The same forgery against an unprefixed tree succeeds: the prefixes are
	// what stops it.
	plain := func(b []byte) [32]byte { return sha256.Sum256(b) }
	pl := make([][32]byte, 4)
	for i := range pl {
		pl[i] = plain(leaves[i])
	}
	pn := func(a, b [32]byte) [32]byte { return plain(append(slices.Clone(a[:]), b[:]...)) }
	plainRoot := pn(pn(pl[0], pl[1]), pn(pl[2], pl[3]))
	forged := append(slices.Clone(pl[0][:]), pl[1][:]...)
	if pn(plain(forged), pn(pl[2], pl[3])) != plainRoot {
		t.Error("the unprefixed forgery does not work; the test above proves nothing")
	}
}

func TestErrors(t *testing.T) {
	for _, leaves := range [][][]byte{nil, {}} {
		if tr, err := merkle.New(leaves); !errors.Is(err, merkle.ErrEmpty) || tr != nil {
			t.Errorf("New(%v) = %v, %v; want ErrEmpty", leaves, tr, err)
		}
	}
	tr := mustTree(t, testLeaves(5))
	for _, i := range []int{-1, 5, 6, math.MaxInt, math.MinInt} {
		if p, err := tr.Proof(i); !errors.Is(err, merkle.ErrIndex) || p != nil {
			t.Errorf("Proof(%d) = %v, %v; want ErrIndex", i, p, err)
		}
	}
	for _, size := range []int{0, -1, math.MinInt} {
		if _, err := merkle.RootFromProof(nil, 0, size, nil); !errors.Is(err, merkle.ErrProof) {
			t.Errorf("RootFromProof(size %d): %v, want ErrProof", size, err)
		}
	}
}

func TestProofIsTheCallers(t *testing.T) {
	tr := mustTree(t, testLeaves(9))
	p := mustProof(t, tr, 3)
	want := slices.Clone(p)
	p[0] = merkle.Hash{}
	if got := mustProof(t, tr, 3); !slices.Equal(got, want) {
		t.Errorf("Proof changed after the caller edited an earlier result: %x, want %x", got, want)
	}
	if err := merkle.VerifyProof(testLeaves(9)[3], 3, 9, want, tr.Root()); err != nil {
		t.Error(err)
	}
}

func TestLeavesAreNotRetained(t *testing.T) {
	leaves := testLeaves(6)
	tr := mustTree(t, leaves)
	root := tr.Root()
	for _, l := range leaves {
		for i := range l {
			l[i] ^= 0xff
		}
	}
	if tr.Root() != root {
		t.Error("root changed when the caller reused the leaf buffers")
	}
}

func TestConcurrentUse(t *testing.T) {
	leaves := testLeaves(33)
	tr := mustTree(t, leaves)
	var wg sync.WaitGroup
	errs := make(chan error, len(leaves))
	for i := range leaves {
		wg.Go(func() {
			p, err := tr.Proof(i)
			if err == nil {
				err = merkle.VerifyProof(leaves[i], i, tr.Size(), p, tr.Root())
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

func TestParseProof(t *testing.T) {
	h := make([]byte, merkle.HashSize)
	h[0] = 1
	good, err := merkle.ParseProof([][]byte{h, h})
	if err != nil || len(good) != 2 || good[1][0] != 1 {
		t.Fatalf("ParseProof(2 hashes) = %x, %v", good, err)
	}
	if p, err := merkle.ParseProof(nil); err != nil || len(p) != 0 {
		t.Errorf("ParseProof(nil) = %x, %v", p, err)
	}
	tooLong := make([][]byte, 65)
	for i := range tooLong {
		tooLong[i] = h
	}
	bad := map[string][][]byte{
		"short element": {h, h[:31]},
		"long element":  {append(slices.Clone(h), 0)},
		"empty element": {{}},
		"65 elements":   tooLong,
	}
	for name, path := range bad {
		if p, err := merkle.ParseProof(path); !errors.Is(err, merkle.ErrProof) || p != nil {
			t.Errorf("%s: ParseProof = %x, %v; want ErrProof", name, p, err)
		}
	}
	if _, err := merkle.ParseHash(h[:16]); !errors.Is(err, merkle.ErrProof) {
		t.Errorf("ParseHash(16 bytes): %v, want ErrProof", err)
	}
}

func TestSignedDigest(t *testing.T) {
	root := unhexHash(t, ctRoots[7])
	// Independent values: `xxd -r -p | openssl dgst -sha256|-sha384|-sha512`
	// over the 32 root bytes.
	tests := []struct {
		h    crypto.Hash
		want string
	}{
		{crypto.SHA256, "b2fd52b5ae233eb2ae42a65a667e7565d1b7de42dc3814ac2fc5fe88907db749"},
		{crypto.SHA384, "fb92f1d94df045ffd79130476c10dcdb49f22ffb4b8b5fbb5d6dc6bebb5d4fa25d8d407299b657a0ed720c77ce0b6a37"},
		{crypto.SHA512, "0a8c90147bf0dfe398cc6e370267394c1aa319231b63ea8cb9ba0ed7012c406bc0a37956bc2a76bab477103a0d50e5e7ae585ba0219e6c9c703e9ee61edec755"},
	}
	for _, tc := range tests {
		t.Run(tc.h.String(), func(t *testing.T) {
			got, err := merkle.SignedDigest(root, tc.h)
			if err != nil {
				t.Fatal(err)
			}
			if hex.EncodeToString(got) != tc.want {
				t.Errorf("SignedDigest = %x, want %s", got, tc.want)
			}
			if len(got) != tc.h.Size() {
				t.Errorf("digest of %d bytes, want %d", len(got), tc.h.Size())
			}
			hh := tc.h.New()
			hh.Write(root[:])
			if sum := hh.Sum(nil); !bytes.Equal(got, sum) {
				t.Errorf("SignedDigest = %x, h.New().Write(root).Sum = %x", got, sum)
			}
		})
	}
	for _, h := range []crypto.Hash{0, crypto.MD5, crypto.SHA1, crypto.SHA224, crypto.SHA3_256, crypto.SHA512_256, crypto.Hash(999)} {
		if d, err := merkle.SignedDigest(root, h); !errors.Is(err, merkle.ErrHash) || d != nil {
			t.Errorf("SignedDigest(%v) = %x, %v; want ErrHash", h, d, err)
		}
	}
}

// TestImportsOnlyStandardLibrary keeps the package usable by the pure-Go
// client: no project or third-party imports, no cgo.
func TestImportsOnlyStandardLibrary(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	checked := 0
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if p == "C" || strings.Contains(strings.SplitN(p, "/", 2)[0], ".") {
				t.Errorf("%s imports %q", name, p)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no source files found")
	}
}

func BenchmarkNew(b *testing.B) {
	for _, n := range []int{64, 1024} {
		leaves := make([][]byte, n)
		for i := range leaves {
			d := sha256.Sum256([]byte(strconv.Itoa(i)))
			leaves[i] = d[:]
		}
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := merkle.New(leaves); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkProofAndVerify(b *testing.B) {
	const n = 1024
	leaves := make([][]byte, n)
	for i := range leaves {
		d := sha256.Sum256([]byte(strconv.Itoa(i)))
		leaves[i] = d[:]
	}
	tr := mustTree(b, leaves)
	root := tr.Root()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		p, err := tr.Proof(i % n)
		if err != nil {
			b.Fatal(err)
		}
		if err := merkle.VerifyProof(leaves[i%n], i%n, n, p, root); err != nil {
			b.Fatal(err)
		}
		i++
	}
}
