package wxcrypt_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/wxdomain/wxdomain/internal/wxcrypt"
)

// The test vector of WeChat's own sample code for its message encryption
// (WXBizMsgCryptTest): key, appid, random prefix, message and ciphertext.
const (
	sampleKey    = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
	sampleAppID  = "wxb11529c136998cb6"
	sampleToken  = "pamtest"
	sampleRandom = "aaaabbbbccccdddd"
	sampleMsg    = "我是中文abcd123"
	sampleCipher = "jn1L23DB+6ELqJ+6bruv21Y6MD7KeIfP82D6gU39rmkgczbWwt5+3bnyg5K55bgVtVzd832WzZGMhkP72vVOfg=="
)

func TestWeChatSampleVector(t *testing.T) {
	t.Parallel()
	c, err := wxcrypt.New(sampleToken, sampleKey, sampleAppID)
	require.NoError(t, err)
	got, err := c.Encrypt([]byte(sampleRandom), []byte(sampleMsg))
	require.NoError(t, err)
	assert.Equal(t, sampleCipher, got, "encrypts exactly as WeChat's sample does")

	sig := c.Signature("1409304348", "xxxxxx", sampleCipher)
	msg, err := c.Decrypt(sig, "1409304348", "xxxxxx", sampleCipher)
	require.NoError(t, err)
	assert.Equal(t, sampleMsg, string(msg))
}

func TestRefusals(t *testing.T) {
	t.Parallel()
	c, err := wxcrypt.New(sampleToken, sampleKey, sampleAppID)
	require.NoError(t, err)
	sig := c.Signature("1", "n", sampleCipher)
	_, err = c.Decrypt(sig, "2", "n", sampleCipher)
	assert.ErrorIs(t, err, wxcrypt.ErrSignature, "timestamp changed")
	_, err = c.Decrypt("0000", "1", "n", sampleCipher)
	assert.ErrorIs(t, err, wxcrypt.ErrSignature)

	other, err := wxcrypt.New(sampleToken, sampleKey, "wxsomeoneelse00000")
	require.NoError(t, err)
	_, err = other.Decrypt(sig, "1", "n", sampleCipher)
	assert.ErrorIs(t, err, wxcrypt.ErrAppID)

	for _, bad := range []string{"", "not base64!", "YWJj", "AAAAAAAAAAAAAAAAAAAAAA=="} {
		_, err = c.Decrypt(c.Signature("1", "n", bad), "1", "n", bad)
		assert.ErrorIs(t, err, wxcrypt.ErrMalformed, bad)
	}
	_, err = wxcrypt.New("t", "short", "wx1")
	assert.Error(t, err)
	_, err = wxcrypt.New("", sampleKey, "wx1")
	assert.Error(t, err)
}

func FuzzDecrypt(f *testing.F) {
	f.Add(sampleCipher)
	f.Add("")
	f.Add("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
	c, err := wxcrypt.New(sampleToken, sampleKey, sampleAppID)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, encrypted string) {
		// A valid signature gets the input past the first check.
		_, _ = c.Decrypt(c.Signature("1", "n", encrypted), "1", "n", encrypted)
	})
}
