package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"

	"go.yaml.in/yaml/v3"

	"github.com/wxdomain/wxdomain/tasks"
)

// Secret holds a platform's app secret. It prints as [redacted] however it
// is formatted or encoded, so it cannot leak through a log line or a record.
type Secret string

func (Secret) String() string               { return "[redacted]" }
func (Secret) GoString() string             { return "[redacted]" }
func (Secret) MarshalJSON() ([]byte, error) { return []byte(`"[redacted]"`), nil }
func (Secret) MarshalText() ([]byte, error) { return []byte("[redacted]"), nil }
func (s Secret) Reveal() string             { return string(s) }

// Platform is one third-party platform from the platforms file.
type Platform struct {
	AppID     string `yaml:"appid"`
	Secret    Secret `yaml:"secret"`
	SecretEnv string `yaml:"secret_env"`
	// Rate is upstream calls per second (fractions allowed); 0 takes
	// WXDOMAIN_DEFAULT_RATE. Burst 0 takes WXDOMAIN_DEFAULT_BURST.
	Rate  float64 `yaml:"rate"`
	Burst int     `yaml:"burst"`
	// Token and EncodingAESKey verify and decrypt WeChat's pushes to the
	// authorization-event URL (optional; set both or neither).
	Token          Secret `yaml:"token"`
	EncodingAESKey Secret `yaml:"encoding_aes_key"`
}

// Platforms is the parsed platforms file.
type Platforms struct {
	List []Platform
	byID map[string]int
}

var envRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// LoadPlatforms reads a platforms file. Secrets named by secret_env are not
// looked up here (producers don't need them); see ResolveSecrets.
func LoadPlatforms(path string) (*Platforms, error) {
	if path == "" {
		return nil, errors.New("WXDOMAIN_PLATFORMS_FILE is not set: it lists the platforms (appid, secret_env, rate) wxdomain may change")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("WXDOMAIN_PLATFORMS_FILE: %w", err)
	}
	p, err := ParsePlatforms(b)
	if err != nil {
		return nil, fmt.Errorf("WXDOMAIN_PLATFORMS_FILE %s: %w", path, err)
	}
	return p, nil
}

// ParsePlatforms parses the YAML of a platforms file, refusing unknown fields.
func ParsePlatforms(b []byte) (*Platforms, error) {
	var doc struct {
		Platforms []Platform `yaml:"platforms"`
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	p := &Platforms{List: doc.Platforms, byID: map[string]int{}}
	var errs []error
	for i, pl := range doc.Platforms {
		at := fmt.Sprintf("platforms[%d]", i)
		if !tasks.ValidAppID(pl.AppID) {
			// Appids become parts of Redis keys: only WeChat's form is taken.
			errs = append(errs, fmt.Errorf("%s.appid %q: not a component appid: want %s", at, tasks.Truncate(pl.AppID), tasks.AppIDForm))
		}
		if _, dup := p.byID[pl.AppID]; dup {
			errs = append(errs, fmt.Errorf("%s.appid %s: listed twice", at, pl.AppID))
		} else {
			p.byID[pl.AppID] = i
		}
		switch {
		case pl.Secret != "" && pl.SecretEnv != "":
			errs = append(errs, fmt.Errorf("%s (%s): set secret or secret_env, not both", at, pl.AppID))
		case pl.Secret == "" && pl.SecretEnv == "":
			errs = append(errs, fmt.Errorf("%s (%s): secret_env (or secret) is required", at, pl.AppID))
		case pl.SecretEnv != "" && !envRe.MatchString(pl.SecretEnv):
			errs = append(errs, fmt.Errorf("%s (%s): secret_env %q is not an environment variable name", at, pl.AppID, pl.SecretEnv))
		}
		if pl.Rate < 0 {
			errs = append(errs, fmt.Errorf("%s (%s): rate %v must not be negative", at, pl.AppID, pl.Rate))
		}
		if (pl.Token == "") != (pl.EncodingAESKey == "") {
			errs = append(errs, fmt.Errorf("%s (%s): set token and encoding_aes_key together", at, pl.AppID))
		}
		if k := pl.EncodingAESKey; k != "" && len(k) != 43 {
			errs = append(errs, fmt.Errorf("%s (%s): encoding_aes_key must be 43 characters, got %d", at, pl.AppID, len(k)))
		}
		if pl.Burst < 0 {
			errs = append(errs, fmt.Errorf("%s (%s): burst %d must not be negative", at, pl.AppID, pl.Burst))
		}
	}
	if len(doc.Platforms) == 0 {
		errs = append(errs, errors.New("no platforms listed (want a top-level 'platforms:' list)"))
	}
	return p, errors.Join(errs...)
}

// Get returns the platform with an appid.
func (p *Platforms) Get(appid string) (Platform, bool) {
	i, ok := p.byID[appid]
	if !ok {
		return Platform{}, false
	}
	return p.List[i], true
}

// Has reports whether appid is configured.
func (p *Platforms) Has(appid string) bool {
	_, ok := p.byID[appid]
	return ok
}

// ResolveSecrets reads secret_env variables into Secret; the error names
// each missing variable (never a value).
func (p *Platforms) ResolveSecrets(getenv func(string) string) error {
	var errs []error
	for i := range p.List {
		pl := &p.List[i]
		if pl.SecretEnv == "" {
			continue
		}
		v := getenv(pl.SecretEnv)
		if v == "" {
			errs = append(errs, fmt.Errorf("platform %s: environment variable %s (its secret_env) is not set", pl.AppID, pl.SecretEnv))
			continue
		}
		pl.Secret = Secret(v)
	}
	return errors.Join(errs...)
}
