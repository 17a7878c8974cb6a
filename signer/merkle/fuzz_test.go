package merkle_test

import (
	"errors"
	"slices"
	"testing"

	"github.com/hsmsigner/hsmsigner/signer/merkle"
)

// FuzzVerifyProof feeds arbitrary leaves, positions, paths (cut into
// HashSize chunks, the last one possibly short) and roots to ParseProof,
// RootFromProof and VerifyProof. They must never panic, must fail only with
// ErrProof, must agree with each other, and, for small trees, must accept
// nothing but the tree's own audit path.
func FuzzVerifyProof(f *testing.F) {
	f.Fuzz(func(t *testing.T, leaf []byte, index, size int, path, rootBytes []byte) {
		var elems [][]byte
		for p := path; len(p) > 0; {
			n := min(merkle.HashSize, len(p))
			elems = append(elems, p[:n])
			p = p[n:]
		}
		proof, err := merkle.ParseProof(elems)
		if err != nil {
			if !errors.Is(err, merkle.ErrProof) {
				t.Fatalf("ParseProof: %v does not wrap ErrProof", err)
			}
			if len(path)%merkle.HashSize == 0 && len(elems) <= 64 {
				t.Fatalf("ParseProof rejected %d whole hashes: %v", len(elems), err)
			}
			// Go on with the whole hashes, however many.
			proof = nil
			for _, e := range elems {
				if len(e) == merkle.HashSize {
					proof = append(proof, merkle.Hash(e))
				}
			}
		}
		var root merkle.Hash
		copy(root[:], rootBytes)

		got, rerr := merkle.RootFromProof(leaf, index, size, proof)
		verr := merkle.VerifyProof(leaf, index, size, proof, root)
		if verr != nil && !errors.Is(verr, merkle.ErrProof) {
			t.Fatalf("VerifyProof: %v does not wrap ErrProof", verr)
		}
		if rerr != nil {
			if !errors.Is(rerr, merkle.ErrProof) {
				t.Fatalf("RootFromProof: %v does not wrap ErrProof", rerr)
			}
			if verr == nil {
				t.Fatalf("VerifyProof accepted what RootFromProof rejected: %v", rerr)
			}
		} else {
			if (verr == nil) != (got == root) {
				t.Fatalf("VerifyProof = %v, but RootFromProof = %s and root = %s", verr, got, root)
			}
			if err := merkle.VerifyProof(leaf, index, size, proof, got); err != nil {
				t.Fatalf("VerifyProof against RootFromProof's own root: %v", err)
			}
		}

		// Small trees: build one with the leaf at index. Its own path must
		// verify, and no other path may (that would be a hash collision).
		if size < 1 || size > 64 || index < 0 || index >= size {
			return
		}
		leaves := make([][]byte, size)
		for i := range leaves {
			leaves[i] = []byte{byte(i), byte(size)}
		}
		leaves[index] = leaf
		tr, err := merkle.New(leaves)
		if err != nil {
			t.Fatal(err)
		}
		own, err := tr.Proof(index)
		if err != nil {
			t.Fatal(err)
		}
		if err := merkle.VerifyProof(leaf, index, size, own, tr.Root()); err != nil {
			t.Fatalf("own proof of leaf %d of %d: %v", index, size, err)
		}
		if merkle.VerifyProof(leaf, index, size, proof, tr.Root()) == nil && !slices.Equal(proof, own) {
			t.Fatalf("a foreign path verifies leaf %d of %d", index, size)
		}
	})
}
