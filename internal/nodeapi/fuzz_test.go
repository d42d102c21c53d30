package nodeapi

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// FuzzDecodeRequest feeds arbitrary bodies to the strict decoder of every
// request type and checks that a decoded body re-encodes into something it
// accepts again.
func FuzzDecodeRequest(f *testing.F) {
	csr := base64.StdEncoding.EncodeToString(csrFor(f, newKey(f)))
	for _, s := range []string{
		`{"method":"join_token","token":"abc","role":"agent","csr":"` + csr + `"}`,
		`{"method":"k8s_psat","token":"eyJ.x.y","role":"workload","csr":"` + csr + `"}`,
		`{"csr":"` + csr + `"}`,
		`{"requests":[{"spiffe_id":"spiffe://example.org/a","csr":"` + csr + `"}]}`,
		`{"spiffe_id":"spiffe://example.org/a","audience":["x","y"]}`,
		`{"csr":"!!"}`, `{"requests":null}`, `{} {}`, `[]`, `null`, `{"a":1}`, "",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, v := range []any{&attestRequest{}, &renewRequest{}, &x509SVIDsRequest{}, &jwtSVIDRequest{}} {
			_ = decodeJSON(bytes.NewReader(b), v)
		}
	})
}

// FuzzHandler sends arbitrary bodies to every endpoint as a node agent: the
// handler answers with a JSON error or an SVID for an allowed Workload, and
// never panics.
func FuzzHandler(f *testing.F) {
	e := newEnv(f)
	agent := e.svid(f, agentA)
	csr := base64.StdEncoding.EncodeToString(csrFor(f, newKey(f)))
	f.Add(PathAttest, []byte(`{"method":"k8s_psat","token":"pod-shop-db","role":"workload","csr":"`+csr+`"}`))
	f.Add(PathRenew, []byte(`{"csr":"`+csr+`"}`))
	f.Add(PathX509SVIDs, []byte(`{"requests":[{"spiffe_id":"`+dbID+`","csr":"`+csr+`"}]}`))
	f.Add(PathJWTSVID, []byte(`{"spiffe_id":"`+webID+`","audience":["x"]}`))
	f.Add(PathX509SVIDs, []byte(`{"requests":[{"spiffe_id":"spiffe://example.org/postern/server","csr":"`+csr+`"}]}`))
	f.Fuzz(func(t *testing.T, path string, body []byte) {
		if !strings.HasPrefix(path, Prefix) {
			path = Prefix + path
		}
		r := httptest.NewRequest(http.MethodPost, "https://127.0.0.1"+Prefix, bytes.NewReader(body))
		r.URL.Path = path
		r.TLS = &tls.ConnectionState{PeerCertificates: []*x509.Certificate{agent.Leaf}}
		r = r.WithContext(context.Background())
		w := httptest.NewRecorder()
		e.h.ServeHTTP(w, r)
		if w.Code == 200 && strings.Contains(w.Body.String(), "postern/server") {
			t.Fatalf("issued for the server's identity: %s", w.Body)
		}
		if w.Header().Get("Content-Type") != "application/json" {
			t.Fatalf("Content-Type %q", w.Header().Get("Content-Type"))
		}
	})
}
