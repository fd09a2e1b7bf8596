package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
	"syscall"

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

// PlatformsFileEnv is the environment variable naming the platforms file.
const PlatformsFileEnv = "WXDOMAIN_PLATFORMS_FILE"

// platformsUnset is the error for an empty platforms file path.
const platformsUnset = PlatformsFileEnv + " is not set: it lists the platforms (appid, secret_env, rate) wxdomain may change; " +
	"set it, or pass --platforms-file; an example is cmd/wxdomain/platforms.example.yaml"

// LoadPlatforms reads a platforms file whose path came from
// WXDOMAIN_PLATFORMS_FILE; see LoadPlatformsFrom.
func LoadPlatforms(path string) (*Platforms, error) {
	return LoadPlatformsFrom(path, PlatformsFileEnv)
}

// LoadPlatformsFrom reads a platforms file. source is what the user set to
// name it ("--platforms-file" or "WXDOMAIN_PLATFORMS_FILE"; "" means the
// latter), and starts every error, as in
//
//	--platforms-file /nope.yaml: no such file
//
// A file that cannot be read gives an error that wraps the os error
// (errors.Is(err, fs.ErrNotExist) holds). Secrets named by secret_env are
// not looked up here (producers don't need them); see ResolveSecrets.
func LoadPlatformsFrom(path, source string) (*Platforms, error) {
	if source == "" {
		source = PlatformsFileEnv
	}
	if path == "" {
		return nil, errors.New(platformsUnset)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, &fileError{text: fmt.Sprintf("%s %s: %s", source, path, fileErrorText(err)), err: err}
	}
	p, err := ParsePlatforms(b)
	if err != nil {
		return nil, fmt.Errorf("%s %s: %w", source, path, err)
	}
	return p, nil
}

// fileError is a file that cannot be read, said plainly; it wraps the os
// error.
type fileError struct {
	text string
	err  error
}

func (e *fileError) Error() string { return e.text }
func (e *fileError) Unwrap() error { return e.err }

// fileErrorText says why a file cannot be read without Go's "open PATH:".
func fileErrorText(err error) string {
	var pe *fs.PathError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return "no such file"
	case errors.Is(err, fs.ErrPermission):
		return "permission denied"
	case errors.Is(err, syscall.EISDIR):
		return "is a directory, not a file"
	case errors.As(err, &pe):
		return pe.Err.Error()
	}
	return err.Error()
}

// platformFields are a platform's fields, in the order errors list them.
var platformFields = []string{"appid", "secret", "secret_env", "rate", "burst", "token", "encoding_aes_key"}

// platformsShape shows what a platforms file looks like, for errors about
// its shape.
const platformsShape = `the file must be a mapping with a "platforms" list:
  platforms:
    - appid: wx1234567890abcdef
      secret_env: WX1234_SECRET
      rate: 5`

// ParsePlatforms parses the YAML of a platforms file, refusing unknown fields.
// Errors name the entry and field as written in the file (platforms[0].rate),
// with the line, and say what is wanted; they never quote a secret.
func ParsePlatforms(b []byte) (*Platforms, error) {
	var root yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(b)).Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, errors.New("the file is empty; " + platformsShape)
		}
		return nil, syntaxError(err)
	}
	top := &root
	if top.Kind == yaml.DocumentNode && len(top.Content) > 0 {
		top = deref(top.Content[0])
	}
	switch {
	case isNull(top):
		return nil, errors.New("the file is empty; " + platformsShape)
	case top.Kind != yaml.MappingNode:
		return nil, fmt.Errorf("line %d: found %s at the top, but %s", top.Line, kindName(top), platformsShape)
	}
	fields, errs := mappingFields(top, "the file")
	var list *yaml.Node
	for _, f := range fields {
		if f.name == "platforms" {
			list = deref(f.val)
			continue
		}
		errs = append(errs, fmt.Errorf(`line %d: unknown top-level key %q; the file has one top-level key, "platforms"`, f.line, f.name))
	}
	switch {
	case len(errs) > 0:
		if list == nil {
			return nil, errors.Join(errs...)
		}
	case list == nil:
		return nil, errors.New(`no "platforms" list; ` + platformsShape)
	}
	if !isNull(list) && list.Kind != yaml.SequenceNode {
		return nil, errors.Join(append(errs, fmt.Errorf("line %d: platforms: found %s, but it must be a list, each entry starting with \"- appid:\"; %s", list.Line, kindName(list), platformsShape))...)
	}

	p := &Platforms{byID: map[string]int{}}
	firstLine := map[string]int{}
	for i, n := range list.Content {
		at := fmt.Sprintf("platforms[%d]", i)
		pl, lines, perrs := decodePlatform(deref(n), at)
		if len(perrs) > 0 {
			errs = append(errs, perrs...)
			continue
		}
		line := func(field string) int {
			if l, ok := lines[field]; ok {
				return l
			}
			return lines[""]
		}
		// who names the entry: its appid once that is known to be good.
		who := at
		switch {
		case pl.AppID == "":
			errs = append(errs, fmt.Errorf("line %d: %s: appid is required: want %s", line(""), at, tasks.AppIDForm))
		case !tasks.ValidAppID(pl.AppID):
			// Appids become parts of Redis keys: only WeChat's form is taken.
			errs = append(errs, fmt.Errorf("line %d: %s.appid %q: not a component appid: want %s", line("appid"), at, tasks.Truncate(pl.AppID), tasks.AppIDForm))
		default:
			who = fmt.Sprintf("%s (%s)", at, pl.AppID)
			if j, dup := p.byID[pl.AppID]; dup {
				errs = append(errs, fmt.Errorf("line %d: %s.appid %s: listed twice (first as platforms[%d], line %d)", line("appid"), at, pl.AppID, j, firstLine[pl.AppID]))
			} else {
				p.byID[pl.AppID] = len(p.List)
				firstLine[pl.AppID] = line("appid")
			}
		}
		p.List = append(p.List, pl)
		switch {
		case pl.Secret != "" && pl.SecretEnv != "":
			errs = append(errs, fmt.Errorf("line %d: %s: set secret or secret_env, not both", line(""), who))
		case pl.Secret == "" && pl.SecretEnv == "":
			errs = append(errs, fmt.Errorf("line %d: %s: secret_env (or secret) is required", line(""), who))
		case pl.SecretEnv != "" && !envRe.MatchString(pl.SecretEnv):
			errs = append(errs, fmt.Errorf("line %d: %s: secret_env %q is not an environment variable name", line("secret_env"), who, tasks.Truncate(pl.SecretEnv)))
		}
		if pl.Rate < 0 {
			errs = append(errs, fmt.Errorf("line %d: %s: rate %v must not be negative", line("rate"), who, pl.Rate))
		}
		if (pl.Token == "") != (pl.EncodingAESKey == "") {
			errs = append(errs, fmt.Errorf("line %d: %s: set token and encoding_aes_key together", line(""), who))
		}
		if k := pl.EncodingAESKey; k != "" && len(k) != 43 {
			errs = append(errs, fmt.Errorf("line %d: %s: encoding_aes_key must be 43 characters, got %d", line("encoding_aes_key"), who, len(k)))
		}
		if pl.Burst < 0 {
			errs = append(errs, fmt.Errorf("line %d: %s: burst %d must not be negative", line("burst"), who, pl.Burst))
		}
	}
	if len(list.Content) == 0 {
		errs = append(errs, fmt.Errorf(`line %d: no platforms listed: the "platforms" list is empty; %s`, list.Line, platformsShape))
	}
	return p, errors.Join(errs...)
}

// decodePlatform checks one entry of the platforms list and decodes it.
// lines holds the line of each field given, and of the entry under "".
func decodePlatform(n *yaml.Node, at string) (pl Platform, lines map[string]int, errs []error) {
	lines = map[string]int{"": n.Line}
	if n.Kind != yaml.MappingNode {
		return pl, lines, []error{fmt.Errorf("line %d: %s: found %s, but each entry is a mapping of fields such as:\n"+
			"    - appid: wx1234567890abcdef\n      secret_env: WX1234_SECRET\n      rate: 5", n.Line, at, kindName(n))}
	}
	fields, errs := mappingFields(n, at)
	for _, f := range fields {
		v := deref(f.val)
		lines[f.name] = v.Line
		switch f.name {
		case "appid", "secret", "secret_env", "token", "encoding_aes_key":
			if v.Kind != yaml.ScalarNode {
				errs = append(errs, fmt.Errorf("line %d: %s.%s: found %s, but want text", v.Line, at, f.name, kindName(v)))
			}
		case "rate":
			var r float64
			if !isNull(v) && (!isNumber(v) || v.Decode(&r) != nil || math.IsNaN(r) || math.IsInf(r, 0)) {
				errs = append(errs, fmt.Errorf("line %d: %s.rate %s: want a number of calls per second, such as 5 or 0.5 (0 takes WXDOMAIN_DEFAULT_RATE)", v.Line, at, shown(v)))
			}
		case "burst":
			var b float64
			if !isNull(v) && (!isNumber(v) || v.Decode(&b) != nil || b != math.Trunc(b) || math.Abs(b) > math.MaxInt32) {
				errs = append(errs, fmt.Errorf("line %d: %s.burst %s: want a whole number, such as 1 (0 takes WXDOMAIN_DEFAULT_BURST)", v.Line, at, shown(v)))
			}
		default:
			errs = append(errs, fmt.Errorf("line %d: %s: unknown field %q; the fields are %s", f.line, at, f.name, strings.Join(platformFields, ", ")))
		}
	}
	if len(errs) > 0 {
		return pl, lines, errs
	}
	if err := n.Decode(&pl); err != nil {
		// Not expected once the fields are checked; said without yaml's
		// preamble.
		return pl, lines, []error{fmt.Errorf("line %d: %s: %s", n.Line, at, strings.TrimPrefix(strings.ReplaceAll(err.Error(), "yaml: unmarshal errors:\n  ", ""), "yaml: "))}
	}
	return pl, lines, nil
}

// field is one key of a YAML mapping and its value.
type field struct {
	name string
	line int
	val  *yaml.Node
}

// mappingFields lists a mapping's fields, taking merge keys (<<: *anchor)
// as yaml does: a key given in the mapping wins over a merged one. A key
// given twice, or one that is not a name, is an error.
func mappingFields(m *yaml.Node, at string) ([]field, []error) {
	var own, merged []field
	var errs []error
	seen := map[string]int{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := deref(m.Content[i]), m.Content[i+1]
		switch {
		case k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge":
			var from []*yaml.Node
			switch dv := deref(v); dv.Kind {
			case yaml.MappingNode:
				from = []*yaml.Node{dv}
			case yaml.SequenceNode:
				from = dv.Content
			default:
				from = []*yaml.Node{dv}
			}
			for _, src := range from {
				src = deref(src)
				if src.Kind != yaml.MappingNode {
					errs = append(errs, fmt.Errorf("line %d: %s: << must name a mapping (such as *defaults), found %s", src.Line, at, kindName(src)))
					continue
				}
				fs, ferrs := mappingFields(src, at)
				merged = append(merged, fs...)
				errs = append(errs, ferrs...)
			}
		case k.Kind != yaml.ScalarNode:
			errs = append(errs, fmt.Errorf("line %d: %s: found %s as a key; keys are names such as appid", k.Line, at, kindName(k)))
		default:
			if first, dup := seen[k.Value]; dup {
				errs = append(errs, fmt.Errorf("line %d: %s: %s is given twice (first on line %d)", k.Line, at, k.Value, first))
				continue
			}
			seen[k.Value] = k.Line
			own = append(own, field{name: k.Value, line: k.Line, val: v})
		}
	}
	for _, f := range merged {
		if _, ok := seen[f.name]; !ok {
			// Of several merged mappings the first wins, as in yaml.
			seen[f.name] = f.line
			own = append(own, f)
		}
	}
	return own, errs
}

// deref follows an alias (*name) to its anchor's node.
func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" }

func isNumber(n *yaml.Node) bool {
	t := n.ShortTag()
	return n.Kind == yaml.ScalarNode && (t == "!!int" || t == "!!float")
}

// kindName names what a node is, in the file's terms.
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	}
	if isNull(n) {
		return "nothing"
	}
	return "a single value"
}

// shown is a non-secret value for an error: quoted text, or what it is.
func shown(n *yaml.Node) string {
	if n.Kind == yaml.ScalarNode {
		return strconv.Quote(tasks.Truncate(n.Value))
	}
	return "(" + kindName(n) + ")"
}

var yamlLineRe = regexp.MustCompile(`^yaml: line (\d+): `)

// syntaxError says that the file is not YAML, keeping yaml's line.
func syntaxError(err error) error {
	msg := err.Error()
	if m := yamlLineRe.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("line %s: not valid YAML: %s", m[1], msg[len(m[0]):])
	}
	return fmt.Errorf("not valid YAML: %s", strings.TrimPrefix(msg, "yaml: "))
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
