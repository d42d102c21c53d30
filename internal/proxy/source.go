package proxy

import (
	"bytes"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// maxPEMFile bounds the certificate, key and bundle files a FileSource reads.
const maxPEMFile = 1 << 20

// defaultFileCheckInterval is how often a FileSource looks at its files.
const defaultFileCheckInterval = 500 * time.Millisecond

// FileSource is an X.509-SVID and trust bundle source read from PEM files,
// for development, tests and deployments without a Workload API agent. It
// implements x509svid.Source and x509bundle.Source, like go-spiffe's
// workloadapi.X509Source, so TLS configurations built on it rotate without a
// restart: at most every CheckInterval a call looks at the files' size and
// modification time and re-reads them when they changed. A set of files that
// does not parse, or whose key does not match its certificate (a rotation
// caught half-written), is ignored and the last good SVID keeps serving.
// It is safe for concurrent use.
type FileSource struct {
	certFile, keyFile, bundleFile string
	td                            spiffeid.TrustDomain
	now                           func() time.Time

	interval atomic.Int64 // time.Duration

	state     atomic.Pointer[fileState]
	nextCheck atomic.Int64 // unix nanoseconds
	mu        sync.Mutex   // serialises reloads
	closed    atomic.Bool
}

type fileState struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
	stamp  string
}

var (
	_ x509svid.Source   = (*FileSource)(nil)
	_ x509bundle.Source = (*FileSource)(nil)
)

// NewFileSource reads the SVID (certificate chain and PKCS#8 key, PEM) and
// the trust bundle of td (PEM certificates) at once, and fails if they do
// not load.
func NewFileSource(certFile, keyFile, bundleFile string, td spiffeid.TrustDomain) (*FileSource, error) {
	if certFile == "" || keyFile == "" || bundleFile == "" {
		return nil, errors.New("proxy: file source needs a certificate, a key and a bundle file")
	}
	if td.IsZero() {
		return nil, errors.New("proxy: file source needs a trust domain")
	}
	s := &FileSource{certFile: certFile, keyFile: keyFile, bundleFile: bundleFile, td: td, now: time.Now}
	s.interval.Store(int64(defaultFileCheckInterval))
	st, err := s.load()
	if err != nil {
		return nil, err
	}
	s.state.Store(st)
	s.nextCheck.Store(s.now().Add(time.Duration(s.interval.Load())).UnixNano())
	return s, nil
}

// SetCheckInterval changes how often the files are looked at (default
// 500ms); tests use a short one.
func (s *FileSource) SetCheckInterval(d time.Duration) {
	if d > 0 {
		s.interval.Store(int64(d))
		s.nextCheck.Store(0)
	}
}

// GetX509SVID returns the current SVID.
func (s *FileSource) GetX509SVID() (*x509svid.SVID, error) {
	if s.closed.Load() {
		return nil, errors.New("proxy: file source is closed")
	}
	return s.current().svid, nil
}

// GetX509BundleForTrustDomain returns the bundle of td, the only trust
// domain a FileSource knows.
func (s *FileSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if s.closed.Load() {
		return nil, errors.New("proxy: file source is closed")
	}
	if td != s.td {
		return nil, fmt.Errorf("proxy: no bundle for trust domain %q", td)
	}
	return s.current().bundle, nil
}

// Reload looks at the files now and reports whether a new SVID or bundle
// was installed.
func (s *FileSource) Reload() (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reloadLocked()
}

func (s *FileSource) reloadLocked() (bool, error) {
	s.nextCheck.Store(s.now().Add(time.Duration(s.interval.Load())).UnixNano())
	stamp, err := s.stamp()
	if err != nil {
		return false, err
	}
	if stamp == s.state.Load().stamp {
		return false, nil
	}
	st, err := s.load()
	if err != nil {
		return false, err
	}
	s.state.Store(st)
	return true, nil
}

// Close makes the source refuse further use.
func (s *FileSource) Close() error {
	s.closed.Store(true)
	return nil
}

// current returns the state, reloading first when the check interval has
// passed. One caller reloads; concurrent ones use the current state rather
// than wait.
func (s *FileSource) current() *fileState {
	if s.now().UnixNano() >= s.nextCheck.Load() && s.mu.TryLock() {
		_, _ = s.reloadLocked()
		s.mu.Unlock()
	}
	return s.state.Load()
}

// stamp identifies the files' current versions by size and modification time.
func (s *FileSource) stamp() (string, error) {
	var out string
	for _, f := range []string{s.certFile, s.keyFile, s.bundleFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return "", fmt.Errorf("proxy: file source: %w", err)
		}
		out += fmt.Sprintf("%d/%d;", fi.Size(), fi.ModTime().UnixNano())
	}
	return out, nil
}

func (s *FileSource) load() (*fileState, error) {
	stamp, err := s.stamp()
	if err != nil {
		return nil, err
	}
	certPEM, err := readFileBounded(s.certFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readFileBounded(s.keyFile)
	if err != nil {
		return nil, err
	}
	bundlePEM, err := readFileBounded(s.bundleFile)
	if err != nil {
		return nil, err
	}
	// A PEM parser skips a truncated last block, so a file caught in the
	// middle of a write could pass for a complete one (a bundle with one
	// root fewer, say): only whole files are taken.
	for path, data := range map[string][]byte{s.certFile: certPEM, s.keyFile: keyPEM, s.bundleFile: bundlePEM} {
		if !wholePEM(data) {
			return nil, fmt.Errorf("proxy: file source: %s is not complete PEM (being written?)", path)
		}
	}
	svid, err := x509svid.Parse(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("proxy: file source: SVID %s: %w", s.certFile, err)
	}
	if svid.ID.TrustDomain() != s.td {
		return nil, fmt.Errorf("proxy: file source: SVID %s is for trust domain %q, want %q", s.certFile, svid.ID.TrustDomain(), s.td)
	}
	b, err := x509bundle.Parse(s.td, bundlePEM)
	if err != nil {
		return nil, fmt.Errorf("proxy: file source: bundle %s: %w", s.bundleFile, err)
	}
	if b.Empty() {
		return nil, fmt.Errorf("proxy: file source: bundle %s holds no certificates", s.bundleFile)
	}
	return &fileState{svid: svid, bundle: b, stamp: stamp}, nil
}

// wholePEM reports whether b is a sequence of complete PEM blocks with
// nothing but white space around them.
func wholePEM(b []byte) bool {
	for {
		blk, rest := pem.Decode(b)
		if blk == nil {
			return len(bytes.TrimSpace(b)) == 0
		}
		b = rest
	}
}

func readFileBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("proxy: file source: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxPEMFile+1))
	if err != nil {
		return nil, fmt.Errorf("proxy: file source: %w", err)
	}
	if len(b) > maxPEMFile {
		return nil, fmt.Errorf("proxy: file source: %s is larger than %d bytes", path, maxPEMFile)
	}
	return b, nil
}
