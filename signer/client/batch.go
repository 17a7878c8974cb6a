package client

import (
	"crypto"
	"errors"
	"fmt"

	"github.com/hsmsigner/hsmsigner/hsm/sigalg"
	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/merkle"
)

// ErrBatchProof means a digest's Merkle proof or the root signature does
// not verify.
var ErrBatchProof = errors.New("batch item does not verify")

// VerifyBatchItem checks that digest is item proof.Index of a Merkle batch
// signed by pub: the proof leads from the digest to root, and rootSig is
// the signature by alg over root hashed once with alg's hash. resp is the
// SignBatch reply in Merkle mode.
func VerifyBatchItem(pub crypto.PublicKey, resp *signerv1.SignBatchResponse, digest []byte, proof *signerv1.MerkleProof) error {
	alg, err := sigalg.Parse(resp.GetAlgorithm())
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBatchProof, err)
	}
	if len(resp.GetRoot()) != merkle.HashSize {
		return fmt.Errorf("%w: root of %d bytes", ErrBatchProof, len(resp.GetRoot()))
	}
	root := merkle.Hash(resp.GetRoot())
	path := make([]merkle.Hash, len(proof.GetPath()))
	for i, p := range proof.GetPath() {
		if len(p) != merkle.HashSize {
			return fmt.Errorf("%w: proof element %d has %d bytes", ErrBatchProof, i, len(p))
		}
		path[i] = merkle.Hash(p)
	}
	if err := merkle.VerifyProof(digest, int(proof.GetIndex()), int(resp.GetTreeSize()), path, root); err != nil {
		return fmt.Errorf("%w: %w", ErrBatchProof, err)
	}
	signed, err := merkle.SignedDigest(root, alg.Hash)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrBatchProof, err)
	}
	if err := sigalg.Verify(pub, alg, signed, resp.GetRootSignature()); err != nil {
		return fmt.Errorf("%w: root signature: %w", ErrBatchProof, err)
	}
	return nil
}
