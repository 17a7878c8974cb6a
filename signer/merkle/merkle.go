// Package merkle builds the Merkle tree that SignBatch signs in Merkle mode
// and checks the inclusion proofs it returns.
//
// The tree is the Merkle Hash Tree of RFC 6962 section 2.1 over SHA-256:
//
//	leaf hash  = SHA-256(0x00 || leaf)
//	node hash  = SHA-256(0x01 || left || right)
//	MTH(D[n])  = NODE(MTH(D[0:k]), MTH(D[k:n])), k the largest power of two < n
//
// A tree whose size is not a power of two is not padded: an odd node at the
// right edge of a level is carried up unchanged, never hashed with a copy of
// itself. Proofs are the audit paths of RFC 6962 section 2.1.1, leaf end
// first. One HSM signature over the root (see SignedDigest) then covers every
// leaf, as X-Road's hash chains do.
//
// The package is pure Go with no dependencies beyond the standard library so
// that the client can verify proofs with CGO disabled.
package merkle

import (
	"crypto"
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
)

// HashSize is the size in bytes of every hash in the tree (SHA-256).
const HashSize = 32

// maxProofLen bounds the audit path accepted by ParseProof. A tree of at most
// 2^63 leaves has audit paths of at most 63 hashes.
const maxProofLen = 64

// Hash is a SHA-256 value: a leaf hash, a node hash or a root.
type Hash [HashSize]byte

// String returns the hash in lower-case hex.
func (h Hash) String() string { return fmt.Sprintf("%x", h[:]) }

// Domain-separation prefixes of RFC 6962 section 2.1. Without them an
// interior node could be presented as a leaf (a second preimage).
const (
	leafPrefix = 0x00
	nodePrefix = 0x01
)

var (
	// ErrEmpty is returned by New for a batch without leaves: RFC 6962
	// defines an empty tree's hash, but there is nothing to sign.
	ErrEmpty = errors.New("merkle: no leaves")
	// ErrIndex is returned for a leaf index outside the tree.
	ErrIndex = errors.New("merkle: leaf index out of range")
	// ErrProof is wrapped by every error of RootFromProof, VerifyProof,
	// ParseHash and ParseProof: the proof is malformed, does not fit the
	// claimed index and size, or does not lead to the expected root.
	ErrProof = errors.New("merkle: invalid inclusion proof")
	// ErrHash is returned by SignedDigest for a hash function other than
	// SHA-256, SHA-384 and SHA-512.
	ErrHash = errors.New("merkle: unsupported hash function")
)

// LeafHash returns SHA-256(0x00 || leaf).
func LeafHash(leaf []byte) Hash {
	if len(leaf) <= 2*HashSize {
		// Digests are small: hash them from the stack.
		var buf [1 + 2*HashSize]byte
		buf[0] = leafPrefix
		n := copy(buf[1:], leaf)
		return sha256.Sum256(buf[:1+n])
	}
	h := sha256.New()
	h.Write([]byte{leafPrefix})
	h.Write(leaf)
	var out Hash
	h.Sum(out[:0])
	return out
}

// NodeHash returns SHA-256(0x01 || left || right).
func NodeHash(left, right Hash) Hash {
	var buf [1 + 2*HashSize]byte
	buf[0] = nodePrefix
	copy(buf[1:], left[:])
	copy(buf[1+HashSize:], right[:])
	return sha256.Sum256(buf[:])
}

// Tree is an immutable Merkle tree that keeps every level, so that Root is
// O(1) and Proof is O(log n) without rehashing. A Tree is safe for concurrent
// use.
type Tree struct {
	// levels[0] holds the leaf hashes, levels[len-1] the root alone. A level
	// of odd length has its last node carried up unchanged into the next.
	levels [][]Hash
}

// New builds the tree of the given leaves, in order. The leaves are the
// callers' digests; they may have any length (an empty leaf is valid) and are
// not retained. New returns ErrEmpty for zero leaves.
func New(leaves [][]byte) (*Tree, error) {
	n := len(leaves)
	if n == 0 {
		return nil, ErrEmpty
	}
	// One backing array for all levels: n + ceil(n/2) + ... + 1 hashes.
	total, depth := 0, 0
	for w := n; ; w = (w + 1) / 2 {
		total += w
		depth++
		if w == 1 {
			break
		}
	}
	store := make([]Hash, total)
	levels := make([][]Hash, 0, depth)

	level := store[:n:n]
	store = store[n:]
	for i, l := range leaves {
		level[i] = LeafHash(l)
	}
	levels = append(levels, level)
	for len(level) > 1 {
		w := (len(level) + 1) / 2
		next := store[:w:w]
		store = store[w:]
		for i := 0; i+1 < len(level); i += 2 {
			next[i/2] = NodeHash(level[i], level[i+1])
		}
		if len(level)%2 == 1 {
			// RFC 6962: the right subtree is smaller, not padded. The odd
			// node moves up as it is (duplicating it would be wrong and
			// would let two different batches share a root).
			next[w-1] = level[len(level)-1]
		}
		levels = append(levels, next)
		level = next
	}
	return &Tree{levels: levels}, nil
}

// Root returns the Merkle Tree Hash of all leaves.
func (t *Tree) Root() Hash { return t.levels[len(t.levels)-1][0] }

// Size returns the number of leaves.
func (t *Tree) Size() int { return len(t.levels[0]) }

// Proof returns the audit path of the leaf at index (RFC 6962 section 2.1.1):
// the sibling hashes from the leaf's level up to the root. The slice is the
// caller's. It returns an error wrapping ErrIndex for an index outside the
// tree.
func (t *Tree) Proof(index int) ([]Hash, error) {
	if index < 0 || index >= t.Size() {
		return nil, fmt.Errorf("merkle: proof for leaf %d of a %d-leaf tree: %w", index, t.Size(), ErrIndex)
	}
	proof := make([]Hash, 0, len(t.levels)-1)
	for _, level := range t.levels[:len(t.levels)-1] {
		// A node without a sibling was carried up: no path element.
		if sibling := index ^ 1; sibling < len(level) {
			proof = append(proof, level[sibling])
		}
		index >>= 1
	}
	return proof, nil
}

// proofLen returns the length of the audit path of leaf index in a tree of
// size leaves, 0 <= index < size.
func proofLen(index, size int) int {
	n := 0
	for last := size - 1; last > 0; index, last = index>>1, last>>1 {
		if index&1 == 1 || index < last {
			n++
		}
	}
	return n
}

// RootFromProof recomputes the root of a tree of size leaves from the leaf at
// index and its audit path. The error wraps ErrProof when size is not
// positive, when index is outside the tree (then it also wraps ErrIndex) and
// when the length of the path does not fit index and size.
//
// An audit path fixes the leaf's position but not the tree's exact size:
// sizes whose audit paths for index have the same shape (e.g. leaf 0 in trees
// of 3 and 4 leaves) yield the same computation. What a verified proof shows
// is that the leaf is under the root.
func RootFromProof(leaf []byte, index, size int, proof []Hash) (Hash, error) {
	if size <= 0 {
		return Hash{}, fmt.Errorf("merkle: tree size %d: %w", size, ErrProof)
	}
	if index < 0 || index >= size {
		return Hash{}, fmt.Errorf("merkle: leaf %d of a %d-leaf tree: %w: %w", index, size, ErrProof, ErrIndex)
	}
	if want := proofLen(index, size); len(proof) != want {
		return Hash{}, fmt.Errorf("merkle: leaf %d of a %d-leaf tree needs %d path hashes, got %d: %w",
			index, size, want, len(proof), ErrProof)
	}
	r := LeafHash(leaf)
	next := 0
	for last := size - 1; last > 0; index, last = index>>1, last>>1 {
		switch {
		case index&1 == 1: // sibling on the left
			r = NodeHash(proof[next], r)
			next++
		case index < last: // sibling on the right
			r = NodeHash(r, proof[next])
			next++
		default: // rightmost node without sibling: carried up
		}
	}
	return r, nil
}

// VerifyProof checks that leaf is at index of the tree of size leaves whose
// root is root. Every failure wraps ErrProof (see RootFromProof).
func VerifyProof(leaf []byte, index, size int, proof []Hash, root Hash) error {
	got, err := RootFromProof(leaf, index, size, proof)
	if err != nil {
		return err
	}
	if got != root {
		return fmt.Errorf("merkle: leaf %d of a %d-leaf tree leads to root %s, want %s: %w",
			index, size, got, root, ErrProof)
	}
	return nil
}

// ParseHash converts a hash received as bytes (a root or a path element). The
// error wraps ErrProof when b is not HashSize bytes long.
func ParseHash(b []byte) (Hash, error) {
	var h Hash
	if len(b) != HashSize {
		return h, fmt.Errorf("merkle: hash of %d bytes, want %d: %w", len(b), HashSize, ErrProof)
	}
	copy(h[:], b)
	return h, nil
}

// ParseProof converts an audit path received as bytes (as in the API's
// MerkleProof.path). The error wraps ErrProof when an element is not HashSize
// bytes long or the path is longer than any tree of int size can need.
func ParseProof(path [][]byte) ([]Hash, error) {
	if len(path) > maxProofLen {
		return nil, fmt.Errorf("merkle: path of %d hashes, at most %d: %w", len(path), maxProofLen, ErrProof)
	}
	proof := make([]Hash, len(path))
	for i, b := range path {
		h, err := ParseHash(b)
		if err != nil {
			return nil, fmt.Errorf("merkle: path element %d: %w", i, err)
		}
		proof[i] = h
	}
	return proof, nil
}

// SignedDigest returns the digest the HSM signs for root: the root hashed once
// more with the signature algorithm's hash h, so that an algorithm such as
// SHA384withECDSA gets a digest of its own size. It equals
// h.New().Write(root[:]).Sum(nil). Only SHA-256, SHA-384 and SHA-512 are
// accepted, the hashes of the signing algorithms; anything else returns an
// error wrapping ErrHash.
func SignedDigest(root Hash, h crypto.Hash) ([]byte, error) {
	switch h {
	case crypto.SHA256:
		d := sha256.Sum256(root[:])
		return d[:], nil
	case crypto.SHA384:
		d := sha512.Sum384(root[:])
		return d[:], nil
	case crypto.SHA512:
		d := sha512.Sum512(root[:])
		return d[:], nil
	default:
		return nil, fmt.Errorf("merkle: signed digest with %v: %w", h, ErrHash)
	}
}
