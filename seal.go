package main

// seal.go keeps secrets in the database never in clear: sealed with AES-GCM, or kept as a digest.

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
)

// sealer encrypts the secrets the service must keep but never in clear (signing keys' private
// halves, second factors' secrets) with AES-256-GCM, under a key derived from JWT_SECRET with
// HKDF and a purpose of its own, so that one purpose's sealed values are useless for another.
type sealer struct{ aead cipher.AEAD }

func newSealer(secret []byte, purpose string) *sealer {
	key, err := hkdf.Key(sha256.New, secret, nil, "auth seal: "+purpose, 32)
	if err != nil {
		panic(err) // HKDF-SHA256 gives far more than 32 bytes
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		panic(err) // a 32-byte key is always valid
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		panic(err)
	}
	return &sealer{aead}
}

// seal returns a random nonce followed by the ciphertext of plain, bound to context (a user id,
// say), so that a sealed value copied to another record does not open there.
func (s *sealer) seal(plain, context []byte) []byte {
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	rand.Read(nonce)
	return s.aead.Seal(nonce, nonce, plain, context)
}

var errUnsealable = errors.New("sealed value does not open: another JWT_SECRET, or tampered with")

func (s *sealer) open(sealed, context []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < n {
		return nil, errUnsealable
	}
	plain, err := s.aead.Open(nil, sealed[:n], sealed[n:], context)
	if err != nil {
		return nil, errUnsealable
	}
	return plain, nil
}

// digest is what is stored of a random token (a mailed link's, a second-factor challenge's) in
// hex: SHA-256 suffices, as such a token is at least 128 random bits, not a password that could be
// guessed. Stored tokens are looked up by it: its output must never change.
func digest(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}
