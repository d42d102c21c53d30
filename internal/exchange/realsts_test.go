package exchange

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"postern.dev/postern/internal/ca"
	"postern.dev/postern/internal/server"
	"postern.dev/postern/internal/testca"
	"postern.dev/postern/internal/testserver"
	"postern.dev/postern/internal/token"
)

const (
	qsGateway   = "spiffe://quickstart.local/ns/shop/sa/gateway"
	qsOrders    = "spiffe://quickstart.local/ns/shop/sa/order-processing"
	qsInventory = "spiffe://quickstart.local/ns/shop/sa/inventory"
	qsFinance   = "spiffe://quickstart.local/ns/shop/sa/finance"
)

// ordersClientCredentials lets order-processing call inventory as itself.
const ordersClientCredentials = `apiVersion: postern.dev/v1
kind: ExchangePolicy
metadata: {name: orders-as-itself-to-inventory}
spec:
  grantTypes: [client-credentials]
  clients: [spiffe://quickstart.local/ns/shop/sa/order-processing]
  audiences: [spiffe://quickstart.local/ns/shop/sa/inventory]
  scopes: [inventory:read]
`

// startServer runs a real postern server on a copy of the quickstart
// resources plus extra files, as internal/server's tests do.
func startServer(t *testing.T, extra map[string]string) *server.Server {
	t.Helper()
	srv, _ := testserver.Quickstart(t, extra)
	return srv
}

// realClient returns an exchange client authenticating to srv with an
// SVID for id issued by srv's CA.
func realClient(t *testing.T, srv *server.Server, id string, serverID spiffeid.ID) (*Client, *x509.Certificate) {
	t.Helper()
	key := testca.NewKey(t)
	issued, err := srv.CA().IssueX509SVID(context.Background(), ca.X509SVIDRequest{ID: spiffeid.RequireFromString(id), PublicKey: key.Public()})
	if err != nil {
		t.Fatal(err)
	}
	td := spiffeid.RequireTrustDomainFromString("quickstart.local")
	roots, err := x509bundle.Load(td, srv.BundlePath())
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{
		TokenEndpoint: srv.Issuer() + "/oauth2/token",
		Roots:         roots,
		TrustDomain:   td,
		ServerID:      serverID,
		SVID:          &x509svid.SVID{ID: spiffeid.RequireFromString(id), Certificates: issued.Certificates, PrivateKey: key},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c, issued.Certificates[0]
}

// idpToken signs a user token with the quickstart IdP's demo key.
func idpToken(t *testing.T, sub, scope string) string {
	t.Helper()
	b, err := os.ReadFile("../../examples/quickstart/idp/idp-key.pem")
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key := k.(*ecdsa.PrivateKey)
	tp, _ := (&jose.JSONWebKey{Key: key.Public()}).Thumbprint(crypto.SHA256)
	sg, err := token.NewSigner(base64.RawURLEncoding.EncodeToString(tp), jose.ES256, key, "JWT")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	raw, err := sg.Sign(&token.Claims{Issuer: "https://idp.quickstart.local", Subject: sub, Audience: []string{"quickstart-shop"},
		Scope: scope, IssuedAt: now, Expiry: now.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestAgainstRealSTS(t *testing.T) {
	srv := startServer(t, map[string]string{"zz-client-credentials.yaml": ordersClientCredentials})
	ctx := context.Background()
	// One client checks the STS by host name, the other by SPIFFE ID.
	gw, _ := realClient(t, srv, qsGateway, spiffeid.ID{})
	orders, ordersCert := realClient(t, srv, qsOrders, spiffeid.RequireFromString("spiffe://quickstart.local/postern/server"))

	t.Run("exchange", func(t *testing.T) {
		t1, err := gw.Exchange(ctx, idpToken(t, "alice", "orders:read orders:write"), qsOrders)
		if err != nil {
			t.Fatal(err)
		}
		t2, err := orders.Exchange(ctx, t1.Raw, qsInventory)
		if err != nil {
			t.Fatal(err)
		}
		_, c2, err := token.ParseUnverified(t2.Raw)
		if err != nil {
			t.Fatal(err)
		}
		if c2.Subject != "alice" || !c2.HasAudience(qsInventory) || !slices.Equal(c2.Act.Chain(), []string{qsOrders, qsGateway}) {
			t.Errorf("claims = %+v", c2)
		}
		if c2.Cnf == nil || c2.Cnf.X5tS256 != token.Thumbprint(ordersCert) || t2.Thumbprint != c2.Cnf.X5tS256 {
			t.Error("token not bound to order-processing's certificate")
		}
		if d := time.Until(t2.Expiry); d < 4*time.Minute || d > 5*time.Minute+time.Second {
			t.Errorf("expiry in %v", d)
		}
		// The confused deputy: refused by the STS's DENY policy.
		_, err = orders.Exchange(ctx, t1.Raw, qsFinance)
		var e *Error
		if !errors.As(err, &e) || e.Code != "access_denied" || e.Status != 403 || e.DecisionID == "" || errors.Is(err, ErrUnavailable) {
			t.Errorf("finance: %v", err)
		}
	})
	t.Run("client credentials", func(t *testing.T) {
		tok, err := orders.ClientCredentials(ctx, qsInventory)
		if err != nil {
			t.Fatal(err)
		}
		_, c, err := token.ParseUnverified(tok.Raw)
		if err != nil {
			t.Fatal(err)
		}
		if c.Subject != qsOrders || c.Act != nil || !c.HasAudience(qsInventory) || tok.Scope != "inventory:read" {
			t.Errorf("claims = %+v, scope %q", c, tok.Scope)
		}
		// The gateway has no such policy.
		var e *Error
		if _, err := gw.ClientCredentials(ctx, qsInventory); !errors.As(err, &e) || e.Code != "access_denied" {
			t.Errorf("gateway: %v", err)
		}
	})
}
