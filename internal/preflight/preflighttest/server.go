// Package preflighttest serves verification files over real HTTPS for
// tests: one local TLS server that answers for any domain, with a
// certificate made on the fly for the name asked (by a CA of its own), so
// that the checker and the sandbox see the domains they were given.
// Names starting with "expired." get an expired certificate, names
// starting with "wrongname." one for another name.
package preflighttest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wxdomain/wxdomain/internal/preflight"
)

// Server is a local HTTPS server for any domain.
type Server struct {
	srv    *httptest.Server
	caCert *x509.Certificate
	caKey  *ecdsa.PrivateKey
	// CA trusts the server's certificates.
	CA *x509.CertPool

	mu       sync.Mutex
	certs    map[string]*tls.Certificate
	files    map[string]string // host + path → body
	handlers map[string]http.HandlerFunc
	hits     map[string]int // host → requests
	checks   map[string]int // host → requests from wxdomain's checker
}

// NewServer starts a server, closed when the test ends.
func NewServer(t testing.TB) *Server {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "wxdomain test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	s := &Server{
		caCert: ca, caKey: key, CA: x509.NewCertPool(),
		certs: map[string]*tls.Certificate{}, files: map[string]string{}, handlers: map[string]http.HandlerFunc{}, hits: map[string]int{}, checks: map[string]int{},
	}
	s.CA.AddCert(ca)
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(s.serve))
	s.srv.TLS = &tls.Config{GetCertificate: s.certificate}
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.srv.Listener.Addr().String() }

// Port is the server's port.
func (s *Server) Port() string {
	_, p, _ := net.SplitHostPort(s.Addr())
	return p
}

// Serve makes domain answer body at path ("/NAME").
func (s *Server) Serve(domain, path, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.files[domain+path] = body
}

// ServeFile makes domain serve a verification file.
func (s *Server) ServeFile(domain, name, content string) { s.Serve(domain, "/"+name, content) }

// Handle makes domain answer every request with h.
func (s *Server) Handle(domain string, h http.HandlerFunc) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.handlers[domain] = h
}

// Hits is how many requests reached domain.
func (s *Server) Hits(domain string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hits[domain]
}

// CheckerHits is how many requests wxdomain's checker (not the sandbox)
// made to domain.
func (s *Server) CheckerHits(domain string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.checks[domain]
}

// TotalHits is how many requests reached the server.
func (s *Server) TotalHits() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, h := range s.hits {
		n += h
	}
	return n
}

// Dial connects to the server, whatever address was asked: the dial hook
// that aims a checker or a sandbox at it.
func (s *Server) Dial(ctx context.Context, network, _ string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, s.Addr())
}

// CheckerConfig aims a checker at the server.
func (s *Server) CheckerConfig() preflight.Config {
	return preflight.Config{Dial: s.Dial, RootCAs: s.CA}
}

// Client is an HTTP client aimed at the server that follows no redirect
// (the sandbox's file client).
func (s *Server) Client() *http.Client {
	return &http.Client{
		Timeout:       5 * time.Second,
		Transport:     &http.Transport{DialContext: s.Dial, TLSClientConfig: &tls.Config{RootCAs: s.CA}, DisableKeepAlives: true},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	host := r.Host
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	s.mu.Lock()
	s.hits[host]++
	if strings.HasPrefix(r.UserAgent(), "wxdomain-preflight") {
		s.checks[host]++
	}
	h := s.handlers[host]
	body, ok := s.files[host+r.URL.Path]
	s.mu.Unlock()
	switch {
	case h != nil:
		h(w, r)
	case ok:
		_, _ = w.Write([]byte(body))
	default:
		http.NotFound(w, r)
	}
}

func (s *Server) certificate(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
	name := hello.ServerName
	if name == "" {
		name = "localhost"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.certs[name]; ok {
		return c, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		DNSNames:  []string{name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	switch {
	case strings.HasPrefix(name, "expired."):
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour)
	case strings.HasPrefix(name, "wrongname."):
		tmpl.DNSNames = []string{"elsewhere.example"}
		tmpl.Subject.CommonName = "elsewhere.example"
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.caCert, &key.PublicKey, s.caKey)
	if err != nil {
		return nil, err
	}
	c := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	s.certs[name] = c
	return c, nil
}
