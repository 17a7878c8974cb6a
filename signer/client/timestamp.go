package client

import (
	"crypto"
	"encoding/asn1"
	"errors"
	"fmt"

	"github.com/digitorus/timestamp"

	signerv1 "github.com/hsmsigner/hsmsigner/signer/api"
	"github.com/hsmsigner/hsmsigner/signer/merkle"
	"github.com/hsmsigner/hsmsigner/tsa"
)

// ErrTimestamp means a time-stamp token, or its inclusion proof, does not
// verify for the data.
var ErrTimestamp = errors.New("time-stamp does not verify")

// BatchProof places a digest in a batch stamped once upstream: leaf
// Index of Size, with the sibling hashes of its path, the leaf's first.
type BatchProof struct {
	Index int      `json:"index"`
	Size  int      `json:"size"`
	Path  [][]byte `json:"path"`
}

// ProofOf returns the inclusion proof of a Timestamp answer, or nil for a
// token of the digest alone.
func ProofOf(resp *signerv1.TimestampResponse) *BatchProof {
	if resp.GetBatchSize() == 0 {
		return nil
	}
	return &BatchProof{Index: int(resp.GetBatchIndex()), Size: int(resp.GetBatchSize()), Path: resp.GetProof()}
}

// VerifyTimestamp checks a DER TimeStampToken for digest (of hash): the
// CMS signature, the ESS signing-certificate binding, the chain of the
// TSA's certificate to trust at the token's time with extendedKeyUsage
// timeStamping, and the imprint: digest itself or, with a proof (a
// batched upstream stamp), the SHA-256 of the Merkle root the proof
// leads to from digest. It returns what the token says.
func VerifyTimestamp(token []byte, hash crypto.Hash, digest []byte, proof *BatchProof, trust tsa.Trust) (*timestamp.Timestamp, error) {
	if !hash.Available() || len(digest) != hash.Size() {
		return nil, fmt.Errorf("%w: a %v digest of %d bytes", ErrTimestamp, hash, len(digest))
	}
	imprintHash, imprint := hash, digest
	if proof != nil {
		path, err := merkle.ParseProof(proof.Path)
		if err != nil {
			return nil, fmt.Errorf("%w: inclusion proof: %w", ErrTimestamp, err)
		}
		root, err := merkle.RootFromProof(digest, proof.Index, proof.Size, path)
		if err != nil {
			return nil, fmt.Errorf("%w: inclusion proof: %w", ErrTimestamp, err)
		}
		if imprint, err = merkle.SignedDigest(root, crypto.SHA256); err != nil {
			return nil, err
		}
		imprintHash = crypto.SHA256
	}
	ts, err := tsa.VerifyToken(token, imprintHash, imprint, nil, trust)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTimestamp, err)
	}
	return ts, nil
}

// timeStampResp is RFC 3161's TimeStampResp, granted.
type timeStampResp struct {
	Status struct{ Status int }
	Token  asn1.RawValue
}

// ResponseOf wraps a DER TimeStampToken in a granted DER TimeStampResp,
// the form `openssl ts -verify -in` and most tools read.
func ResponseOf(token []byte) ([]byte, error) {
	var raw asn1.RawValue
	if rest, err := asn1.Unmarshal(token, &raw); err != nil || len(rest) > 0 {
		return nil, fmt.Errorf("%w: not one DER value", ErrTimestamp)
	}
	return asn1.Marshal(timeStampResp{Token: raw})
}

// TokenOf returns the TimeStampToken in der, a DER TimeStampResp (which
// must be granted) or the token itself.
func TokenOf(der []byte) ([]byte, error) {
	var r struct {
		Status struct {
			Status int
			Rest   asn1.RawValue `asn1:"optional"`
			More   asn1.RawValue `asn1:"optional"`
		}
		Token asn1.RawValue `asn1:"optional"`
	}
	if rest, err := asn1.Unmarshal(der, &r); err != nil || len(rest) > 0 {
		return der, nil // not a TimeStampResp: a token, checked when verified
	}
	switch {
	case len(r.Token.FullBytes) == 0:
		return nil, fmt.Errorf("%w: the answer holds no token (PKIStatus %s)", ErrTimestamp, timestamp.Status(r.Status.Status))
	case r.Status.Status != int(timestamp.Granted) && r.Status.Status != int(timestamp.GrantedWithMods):
		return nil, fmt.Errorf("%w: the answer is %s", ErrTimestamp, timestamp.Status(r.Status.Status))
	}
	return r.Token.FullBytes, nil
}
