package federation

import (
	"testing"

	"postern.dev/postern/internal/policy"
	"postern.dev/postern/internal/testca"
)

func FuzzParseBundle(f *testing.F) {
	good, err := bundleOf(f, partnerTD, 4, testca.New(f, partnerTD.Name()).Cert).Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good, true)
	f.Add([]byte(`{"keys": [], "spiffe_refresh_hint": 9223372036854775807, "spiffe_sequence": 1}`), false)
	f.Add([]byte(`{"keys": [{"use": "x509-svid", "kty": "EC", "x5c": ["AA=="]}]}`), true)
	f.Add([]byte(`<html></html>`), false)
	f.Fuzz(func(t *testing.T, data []byte, spiffeAuth bool) {
		fed := policy.Federation{TrustDomain: partnerTD, Profile: policy.ProfileHTTPSWeb}
		if spiffeAuth {
			fed.Profile = policy.ProfileHTTPSSPIFFE
		}
		b, err := parseBundle(fed, data)
		if err != nil {
			return
		}
		if b.TrustDomain() != partnerTD || b.Empty() || (spiffeAuth && len(b.X509Authorities()) == 0) {
			t.Fatalf("accepted %v", b)
		}
		if d := refreshInterval(b); d < MinRefresh || d > MaxRefresh {
			t.Fatalf("refresh interval %v", d)
		}
	})
}
