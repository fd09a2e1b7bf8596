// Package wxcrypt verifies and decrypts the messages WeChat pushes to a
// third-party platform's authorization-event URL, following WeChat's
// published message encryption scheme: SHA-1 signature over the sorted
// token, timestamp, nonce and ciphertext; AES-256-CBC with the key decoded
// from the 43-character EncodingAESKey and the key's first 16 bytes as IV;
// PKCS#7 padding to 32-byte blocks; plaintext = 16 random bytes, a 4-byte
// big-endian length, the message, then the appid.
package wxcrypt

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha1"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sort"
	"strings"
)

// Errors a push can be refused with.
var (
	ErrSignature = errors.New("message signature does not match")
	ErrMalformed = errors.New("message cannot be decrypted")
	ErrAppID     = errors.New("message is for another appid")
)

const blockSize = 32 // WeChat pads to 32 bytes, not AES's 16

// Crypter holds one platform's message token and key.
type Crypter struct {
	token string
	key   []byte
	appid string
}

// New checks the EncodingAESKey (43 characters of base64) and returns a
// crypter for the appid.
func New(token, encodingAESKey, appid string) (*Crypter, error) {
	if token == "" {
		return nil, errors.New("message token is empty")
	}
	if len(encodingAESKey) != 43 {
		return nil, fmt.Errorf("encoding_aes_key must be 43 characters, got %d", len(encodingAESKey))
	}
	key, err := base64.StdEncoding.DecodeString(encodingAESKey + "=")
	if err != nil || len(key) != 32 {
		return nil, errors.New("encoding_aes_key is not valid base64 of a 32-byte key")
	}
	return &Crypter{token: token, key: key, appid: appid}, nil
}

// Signature is WeChat's msg_signature of a ciphertext.
func (c *Crypter) Signature(timestamp, nonce, encrypted string) string {
	parts := []string{c.token, timestamp, nonce, encrypted}
	sort.Strings(parts)
	sum := sha1.Sum([]byte(strings.Join(parts, "")))
	return hex.EncodeToString(sum[:])
}

// Decrypt verifies the signature, then decrypts and checks the message.
func (c *Crypter) Decrypt(msgSignature, timestamp, nonce, encrypted string) ([]byte, error) {
	want := c.Signature(timestamp, nonce, encrypted)
	if subtle.ConstantTimeCompare([]byte(want), []byte(strings.ToLower(msgSignature))) != 1 {
		return nil, ErrSignature
	}
	ct, err := base64.StdEncoding.DecodeString(encrypted)
	if err != nil || len(ct) == 0 || len(ct)%aes.BlockSize != 0 {
		return nil, ErrMalformed
	}
	block, err := aes.NewCipher(c.key)
	if err != nil {
		return nil, ErrMalformed
	}
	plain := make([]byte, len(ct))
	cipher.NewCBCDecrypter(block, c.key[:aes.BlockSize]).CryptBlocks(plain, ct)
	pad := int(plain[len(plain)-1])
	if pad < 1 || pad > blockSize || pad > len(plain) {
		return nil, ErrMalformed
	}
	plain = plain[:len(plain)-pad]
	if len(plain) < 20 {
		return nil, ErrMalformed
	}
	n := binary.BigEndian.Uint32(plain[16:20])
	if uint64(n) > uint64(len(plain)-20) {
		return nil, ErrMalformed
	}
	msg, appid := plain[20:20+n], plain[20+n:]
	if subtle.ConstantTimeCompare(appid, []byte(c.appid)) != 1 {
		return nil, ErrAppID
	}
	return msg, nil
}

// Encrypt is the inverse of Decrypt with the given 16 random bytes; the
// sandbox and tests use it to push messages as WeChat does.
func (c *Crypter) Encrypt(random []byte, msg []byte) (string, error) {
	if len(random) != 16 {
		return "", errors.New("random prefix must be 16 bytes")
	}
	var buf bytes.Buffer
	buf.Write(random)
	_ = binary.Write(&buf, binary.BigEndian, uint32(len(msg)))
	buf.Write(msg)
	buf.WriteString(c.appid)
	pad := blockSize - buf.Len()%blockSize
	buf.Write(bytes.Repeat([]byte{byte(pad)}, pad))
	block, err := aes.NewCipher(c.key)
	if err != nil {
		return "", err
	}
	out := make([]byte, buf.Len())
	cipher.NewCBCEncrypter(block, c.key[:aes.BlockSize]).CryptBlocks(out, buf.Bytes())
	return base64.StdEncoding.EncodeToString(out), nil
}
