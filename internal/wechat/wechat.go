// Package wechat is a plain HTTP client of WeChat Open Platform's component
// API, the part wxdomain needs. It knows nothing of queues or Redis.
//
// Errors: an answer with errcode != 0 is an *APIError; anything that kept us
// from reading an answer (network, timeout, HTTP status, a body that is not
// JSON) is a *TransportError, which is worth retrying. Neither ever contains
// the request URL, because the access token travels in its query string.
package wechat

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// DefaultBaseURL is WeChat's API host.
const DefaultBaseURL = "https://api.weixin.qq.com"

// maxResponseBytes bounds what we read from upstream; real answers are a few KiB.
const maxResponseBytes = 1 << 20

// Client calls the upstream API.
type Client struct {
	base *url.URL
	http *http.Client
}

// New returns a client of the API at baseURL. hc must carry a timeout; a
// nil hc gets a 15-second one.
func New(baseURL string, hc *http.Client) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("wechat base URL %q: want http(s)://host[:port]", baseURL)
	}
	if hc == nil {
		hc = &http.Client{Timeout: 15 * time.Second}
	}
	// Never follow a redirect: it would carry the app secret, the ticket
	// or the access token (query and Referer) to another host. A 3xx is
	// an upstream error like a 5xx.
	c := *hc
	c.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	return &Client{base: u, http: &c}, nil
}

// APIError is an answer with a non-zero errcode.
type APIError struct {
	Code int
	Msg  string
}

func (e *APIError) Error() string {
	return fmt.Sprintf("wechat errcode %d: %s", e.Code, e.Msg)
}

// TransportError means no usable answer was read: the call may or may not
// have reached WeChat.
type TransportError struct {
	Op         string // API path
	StatusCode int    // HTTP status, when one was received
	Err        error
}

func (e *TransportError) Error() string {
	if e.StatusCode != 0 {
		return fmt.Sprintf("%s: HTTP %d: %v", e.Op, e.StatusCode, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.Op, e.Err)
}

func (e *TransportError) Unwrap() error { return e.Err }

// Transient tells whether the failure may pass by itself: no connection,
// a timeout, a 5xx or a 429. A redirect, another 4xx, an answer that is
// not what the API sends, or a certificate refused stay until someone
// changes something, and are not waited out.
func (e *TransportError) Transient() bool {
	if e.StatusCode != 0 {
		return e.StatusCode >= 500 || e.StatusCode == http.StatusTooManyRequests
	}
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		record   tls.RecordHeaderError
	)
	return !errors.As(e.Err, &verify) && !errors.As(e.Err, &unknown) && !errors.As(e.Err, &hostname) &&
		!errors.As(e.Err, &invalid) && !errors.As(e.Err, &record)
}

// Action codes of modify_wxa_jump_domain.
const (
	ActionGet    = "get"
	ActionSet    = "set"
	ActionAdd    = "add"
	ActionDelete = "delete"
)

// JumpDomainChange is a modify_wxa_jump_domain request.
type JumpDomainChange struct {
	Action  string
	Domains []string
	// Publish also changes the published configuration.
	Publish bool
}

// JumpDomains is WeChat's answer to modify_wxa_jump_domain.
type JumpDomains struct {
	Testing []string
	// Published is nil when WeChat left the field out (platform never
	// released), and an empty slice when it sent an empty list.
	Published []string
	// Invalid lists domains that failed verification and were not applied;
	// it can come with errcode 0.
	Invalid []string
	ErrMsg  string
}

// ModifyJumpDomain calls modify_wxa_jump_domain with a component access token.
func (c *Client) ModifyJumpDomain(ctx context.Context, token string, ch JumpDomainChange) (JumpDomains, error) {
	body := map[string]any{"action": ch.Action}
	if ch.Action != ActionGet {
		body["wxa_jump_h5_domain"] = strings.Join(ch.Domains, ";")
		body["is_modify_published_together"] = ch.Publish
	}
	var resp struct {
		apiStatus
		Published *string `json:"published_wxa_jump_h5_domain"`
		Testing   *string `json:"testing_wxa_jump_h5_domain"`
		Invalid   *string `json:"invalid_wxa_jump_h5_domain"`
	}
	if err := c.post(ctx, "/cgi-bin/component/modify_wxa_jump_domain", token, body, &resp, snippet); err != nil {
		return JumpDomains{}, err
	}
	if err := resp.err(); err != nil {
		return JumpDomains{}, err
	}
	out := JumpDomains{
		Testing: SplitDomains(deref(resp.Testing)),
		Invalid: SplitDomains(deref(resp.Invalid)),
		ErrMsg:  resp.ErrMsg,
	}
	if resp.Published != nil {
		out.Published = SplitDomains(*resp.Published)
		if out.Published == nil {
			out.Published = []string{}
		}
	}
	return out, nil
}

// ComponentToken is a component access token and its lifetime.
type ComponentToken struct {
	Token     string
	ExpiresIn time.Duration
}

// FetchComponentToken calls api_component_token.
func (c *Client) FetchComponentToken(ctx context.Context, appid, secret, ticket string) (ComponentToken, error) {
	body := map[string]string{
		"component_appid":         appid,
		"component_appsecret":     secret,
		"component_verify_ticket": ticket,
	}
	var resp struct {
		apiStatus
		Token     string `json:"component_access_token"`
		ExpiresIn int    `json:"expires_in"`
	}
	// The answer holds the token: never quote it in an error.
	if err := c.post(ctx, "/cgi-bin/component/api_component_token", "", body, &resp, quoteNothing); err != nil {
		return ComponentToken{}, err
	}
	if err := resp.err(); err != nil {
		return ComponentToken{}, err
	}
	if resp.Token == "" {
		return ComponentToken{}, &TransportError{Op: "api_component_token", StatusCode: http.StatusOK, Err: errors.New("answer has no component_access_token")}
	}
	exp := time.Duration(resp.ExpiresIn) * time.Second
	if exp <= 0 {
		exp = 7200 * time.Second
	}
	return ComponentToken{Token: resp.Token, ExpiresIn: exp}, nil
}

// ConfirmFile is the domain verification file a domain must serve at its root.
type ConfirmFile struct {
	Name    string
	Content string
}

// DomainConfirmFile calls get_domain_confirmfile.
func (c *Client) DomainConfirmFile(ctx context.Context, token string) (ConfirmFile, error) {
	var resp struct {
		apiStatus
		Name    string `json:"file_name"`
		Content string `json:"file_content"`
	}
	if err := c.post(ctx, "/cgi-bin/component/get_domain_confirmfile", token, struct{}{}, &resp, snippet); err != nil {
		return ConfirmFile{}, err
	}
	if err := resp.err(); err != nil {
		return ConfirmFile{}, err
	}
	return ConfirmFile{Name: resp.Name, Content: resp.Content}, nil
}

// apiStatus is the errcode/errmsg pair; a missing errcode means 0 (seen
// live on get for an empty platform).
type apiStatus struct {
	ErrCode int    `json:"errcode"`
	ErrMsg  string `json:"errmsg"`
}

func (s apiStatus) err() error {
	if s.ErrCode != 0 {
		return &APIError{Code: s.ErrCode, Msg: s.ErrMsg}
	}
	return nil
}

// post sends a JSON request and decodes the answer; quote decides how much
// of an unusable answer an error may show.
func (c *Client) post(ctx context.Context, path, token string, body, out any, quote func([]byte) string) error {
	op := path[strings.LastIndex(path, "/")+1:]
	b, err := json.Marshal(body)
	if err != nil {
		return fmt.Errorf("%s: encode request: %w", op, err)
	}
	u := *c.base
	u.Path = strings.TrimSuffix(u.Path, "/") + path
	if token != "" {
		u.RawQuery = url.Values{"access_token": {token}}.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), bytes.NewReader(b))
	if err != nil {
		return fmt.Errorf("%s: build request: %w", op, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return &TransportError{Op: op, Err: stripURL(err)}
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes+1))
	if err != nil {
		return &TransportError{Op: op, StatusCode: resp.StatusCode, Err: stripURL(err)}
	}
	if resp.StatusCode >= 300 && resp.StatusCode < 400 {
		// Neither the Location nor the body is quoted: either may echo
		// the request's query, which holds the access token.
		return &TransportError{Op: op, StatusCode: resp.StatusCode, Err: fmt.Errorf("redirect%s not followed", redirectHost(resp))}
	}
	if resp.StatusCode != http.StatusOK {
		return &TransportError{Op: op, StatusCode: resp.StatusCode, Err: fmt.Errorf("unexpected status; body starts %q", quote(data))}
	}
	if len(data) > maxResponseBytes {
		return &TransportError{Op: op, StatusCode: resp.StatusCode, Err: errors.New("answer larger than 1 MiB")}
	}
	if err := json.Unmarshal(data, out); err != nil {
		return &TransportError{Op: op, StatusCode: resp.StatusCode, Err: fmt.Errorf("answer is not the expected JSON (%v); body starts %q", err, quote(data))}
	}
	return nil
}

// redirectHost names the host a redirect points to, never its path or query.
func redirectHost(resp *http.Response) string {
	loc, err := resp.Location()
	if err != nil || loc.Host == "" {
		return ""
	}
	return " to host " + loc.Host
}

// stripURL drops the request URL (which holds the access token) from
// net/http's errors, keeping the cause.
func stripURL(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return &cause{op: ue.Op, err: ue.Err}
	}
	return err
}

type cause struct {
	op  string
	err error
}

func (c *cause) Error() string { return c.op + ": " + c.err.Error() }
func (c *cause) Unwrap() error { return c.err }

func quoteNothing([]byte) string { return "(not shown: it may hold a token)" }

func snippet(b []byte) string {
	const n = 64
	if len(b) > n {
		b = b[:n]
	}
	return string(b)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// SplitDomains splits WeChat's ';'-joined list, dropping empty entries and
// surrounding spaces.
func SplitDomains(s string) []string {
	var out []string
	for _, d := range strings.Split(s, ";") {
		if d = strings.TrimSpace(d); d != "" {
			out = append(out, d)
		}
	}
	return out
}
