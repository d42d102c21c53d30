package proxy

import (
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestSVIDPicker(t *testing.T) {
	a := &x509svid.SVID{ID: spiffeid.RequireFromString("spiffe://td.test/a")}
	b := &x509svid.SVID{ID: spiffeid.RequireFromString("spiffe://td.test/b")}
	if got := svidPicker("spiffe://td.test/b")([]*x509svid.SVID{a, b}); got != b {
		t.Errorf("picked %s, want the configured b", got.ID)
	}
	if got := svidPicker("spiffe://td.test/c")([]*x509svid.SVID{a, b}); got != a {
		t.Errorf("picked %s for an identity not offered, want the first (refused later)", got.ID)
	}
}
