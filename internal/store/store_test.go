package store

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"math/big"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"
)

// base is the reference time of the conformance suite: not UTC and with
// nanoseconds, so that both the conversion to UTC and the precision show.
var base = time.Date(2031, 5, 6, 7, 8, 9, 123456789, time.FixedZone("UTC+2", 2*3600))

// newCertDER returns the DER of a fresh self-signed certificate.
func newCertDER(t testing.TB, cn string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: cn},
		NotBefore:             base,
		NotAfter:              base.Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// utc returns t in UTC, as the store returns it; the zero time stays zero.
func utc(t time.Time) time.Time {
	if t.IsZero() {
		return t
	}
	return t.UTC()
}

func utcKey(k SigningKey) SigningKey {
	k.CreatedAt, k.ActivateAt, k.RetireAt, k.ExpireAt = utc(k.CreatedAt), utc(k.ActivateAt), utc(k.RetireAt), utc(k.ExpireAt)
	return k
}

func utcAuthority(a Authority) Authority {
	a.CreatedAt, a.ActivateAt, a.RetireAt, a.ExpireAt = utc(a.CreatedAt), utc(a.ActivateAt), utc(a.RetireAt), utc(a.ExpireAt)
	return a
}

func utcRevocation(r Revocation) Revocation {
	r.CreatedAt, r.ExpiresAt = utc(r.CreatedAt), utc(r.ExpiresAt)
	return r
}

func utcSecret(s ClientSecret) ClientSecret {
	s.CreatedAt, s.ExpiresAt = utc(s.CreatedAt), utc(s.ExpiresAt)
	return s
}

func utcJoin(j JoinToken) JoinToken {
	j.CreatedAt, j.ExpiresAt, j.UsedAt = utc(j.CreatedAt), utc(j.ExpiresAt), utc(j.UsedAt)
	return j
}

// mapSlice applies f to every element of s.
func utcAgent(a Agent) Agent {
	a.AttestedAt, a.ExpiresAt = utc(a.AttestedAt), utc(a.ExpiresAt)
	return a
}

func mapSlice[T any](s []T, f func(T) T) []T {
	out := make([]T, len(s))
	for i, v := range s {
		out[i] = f(v)
	}
	return out
}

// equal fails the test unless got and want are deeply equal.
func equal[T any](t *testing.T, what string, got, want T) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("%s:\n got %+v\nwant %+v", what, got, want)
	}
}

// wantErr fails the test unless err's message is exactly want ("" for nil).
func wantErr(t *testing.T, err error, want string) {
	t.Helper()
	got := ""
	if err != nil {
		got = err.Error()
	}
	if got != want {
		t.Fatalf("error = %q, want %q", got, want)
	}
}

// mustNil fails the test on err.
func mustNil(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// testStore is the conformance suite every Store implementation passes.
// open returns a fresh, empty store that is closed when the test ends.
func testStore(t *testing.T, open func(t *testing.T) Store) {
	ctx := context.Background()

	t.Run("SigningKeys", func(t *testing.T) {
		s := open(t)
		got, err := s.SigningKeys(ctx)
		mustNil(t, err)
		equal(t, "empty store", len(got), 0)

		k0 := SigningKey{ID: "k0", Algorithm: "EdDSA"} // zero times, no bytes
		k1 := SigningKey{
			ID: "k1", Algorithm: "ES256", Public: []byte{1, 2, 3}, Sealed: []byte{4, 5}, KEKID: "kek-1",
			CreatedAt: base, ActivateAt: base.Add(time.Minute), RetireAt: base.Add(time.Hour), ExpireAt: base.Add(2 * time.Hour),
		}
		k2 := SigningKey{ID: "k2", Algorithm: "ES256", Public: []byte{9}, Sealed: []byte{8}, KEKID: "kek-1", CreatedAt: base.Add(time.Second)}
		for _, k := range []SigningKey{k2, k1, k0} {
			mustNil(t, s.PutSigningKey(ctx, k))
		}
		got, err = s.SigningKeys(ctx)
		mustNil(t, err)
		equal(t, "oldest first", got, mapSlice([]SigningKey{k0, k1, k2}, utcKey))

		k1.Algorithm, k1.RetireAt, k1.Sealed = "EdDSA", base.Add(3*time.Hour), []byte{7, 7, 7}
		mustNil(t, s.PutSigningKey(ctx, k1))
		mustNil(t, s.DeleteSigningKey(ctx, "k2"))
		mustNil(t, s.DeleteSigningKey(ctx, "k2"))
		mustNil(t, s.DeleteSigningKey(ctx, "missing"))
		got, err = s.SigningKeys(ctx)
		mustNil(t, err)
		equal(t, "after replace and delete", got, mapSlice([]SigningKey{k0, k1}, utcKey))

		for _, tc := range []struct {
			name string
			k    SigningKey
			want string
		}{
			{"empty id", SigningKey{Algorithm: "ES256"}, "store: put signing key: id is empty"},
			{"empty algorithm", SigningKey{ID: "x"}, "store: put signing key: algorithm is empty"},
			{"long id", SigningKey{ID: strings.Repeat("a", 2049), Algorithm: "ES256"}, "store: put signing key: id is longer than 2048 bytes"},
			{"invalid utf-8", SigningKey{ID: "\xff", Algorithm: "ES256"}, "store: put signing key: id is not valid UTF-8"},
			{"nul", SigningKey{ID: "a\x00b", Algorithm: "ES256"}, "store: put signing key: id contains a NUL byte"},
			{"big key", SigningKey{ID: "x", Algorithm: "ES256", Sealed: make([]byte, 64<<10+1)}, "store: put signing key: sealed key is longer than 65536 bytes"},
			{"time out of range", SigningKey{ID: "x", Algorithm: "ES256", ExpireAt: time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)},
				"store: put signing key: expire at: time outside the storable range (years 1677 to 2262)"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				wantErr(t, s.PutSigningKey(ctx, tc.k), tc.want)
			})
		}
		got, err = s.SigningKeys(ctx)
		mustNil(t, err)
		equal(t, "after rejected puts", len(got), 2)

		// RetireSigningKey writes only a stored key without an expiry: a
		// replica's stale read cannot undo another's revocation.
		ok, err := s.RetireSigningKey(ctx, "k0", base.Add(time.Hour), base.Add(2*time.Hour))
		mustNil(t, err)
		equal(t, "retire a key without expiry", ok, true)
		ok, err = s.RetireSigningKey(ctx, "k0", base.Add(5*time.Hour), base.Add(6*time.Hour))
		mustNil(t, err)
		equal(t, "retire a retired key", ok, false)
		ok, err = s.RetireSigningKey(ctx, "gone", base.Add(time.Hour), base.Add(2*time.Hour))
		mustNil(t, err)
		equal(t, "retire a deleted key", ok, false)
		_, err = s.RetireSigningKey(ctx, "k0", time.Time{}, base)
		wantErr(t, err, "store: retire signing key: both times are required")
		got, err = s.SigningKeys(ctx)
		mustNil(t, err)
		k0.RetireAt, k0.ExpireAt = base.Add(time.Hour), base.Add(2*time.Hour)
		equal(t, "after retirements", got, mapSlice([]SigningKey{k0, k1}, utcKey))
	})

	t.Run("Authorities", func(t *testing.T) {
		s := open(t)
		got, err := s.Authorities(ctx)
		mustNil(t, err)
		equal(t, "empty store", len(got), 0)

		root, mid := newCertDER(t, "root"), newCertDER(t, "intermediate")
		a0 := Authority{ID: "a0"}
		a1 := Authority{ID: "a1", CertDER: newCertDER(t, "a1"), Sealed: []byte{1}, KEKID: "kek",
			CreatedAt: base, ActivateAt: base, RetireAt: base.Add(time.Hour), ExpireAt: base.Add(2 * time.Hour)}
		a2 := Authority{ID: "a2", CertDER: newCertDER(t, "a2"), ChainDER: [][]byte{mid, root}, Sealed: []byte{2}, KEKID: "kek", CreatedAt: base.Add(time.Nanosecond)}
		a3 := Authority{ID: "a3", CertDER: newCertDER(t, "a3"), ChainDER: [][]byte{root}, CreatedAt: base.Add(time.Nanosecond)}
		for _, a := range []Authority{a3, a2, a1, a0} {
			mustNil(t, s.PutAuthority(ctx, a))
		}
		got, err = s.Authorities(ctx)
		mustNil(t, err)
		equal(t, "oldest first, then by id", got, mapSlice([]Authority{a0, a1, a2, a3}, utcAuthority))

		a2.ChainDER = nil
		a2.RetireAt = base.Add(time.Hour)
		mustNil(t, s.PutAuthority(ctx, a2))
		mustNil(t, s.DeleteAuthority(ctx, "a3"))
		mustNil(t, s.DeleteAuthority(ctx, "missing"))
		got, err = s.Authorities(ctx)
		mustNil(t, err)
		equal(t, "after replace and delete", got, mapSlice([]Authority{a0, a1, a2}, utcAuthority))

		for _, tc := range []struct {
			name string
			a    Authority
			want string
		}{
			{"empty id", Authority{}, "store: put authority: id is empty"},
			{"empty chain certificate", Authority{ID: "x", ChainDER: [][]byte{root, {}}}, "store: put authority: chain: chain certificate 1 is empty"},
			{"long chain", Authority{ID: "x", ChainDER: make([][]byte, 17)}, "store: put authority: chain: chain has more than 16 certificates"},
			{"big certificate", Authority{ID: "x", CertDER: make([]byte, 64<<10+1)}, "store: put authority: certificate is longer than 65536 bytes"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				wantErr(t, s.PutAuthority(ctx, tc.a), tc.want)
			})
		}
	})

	t.Run("Revocations", func(t *testing.T) {
		s := open(t)
		r1 := Revocation{Kind: "jti", ID: "j1", ExpiresAt: base.Add(time.Hour), CreatedAt: base}
		r2 := Revocation{Kind: "sid", ID: "s1", ExpiresAt: base.Add(2 * time.Hour), CreatedAt: base}
		r3 := Revocation{Kind: "jti", ID: "j3"} // never expires
		for _, r := range []Revocation{r2, r1, r3} {
			mustNil(t, s.PutRevocation(ctx, r))
		}
		for _, tc := range []struct {
			name string
			now  time.Time
			want []Revocation
		}{
			{"all live", base, []Revocation{r1, r3, r2}},
			{"at the expiry of j1", base.Add(time.Hour), []Revocation{r3, r2}},
			{"after all expiries", base.Add(3 * time.Hour), []Revocation{r3}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				got, err := s.Revocations(ctx, tc.now)
				mustNil(t, err)
				equal(t, "revocations", got, mapSlice(tc.want, utcRevocation))
			})
		}

		// Recording again never shortens and keeps CreatedAt.
		mustNil(t, s.PutRevocation(ctx, Revocation{Kind: "jti", ID: "j1", ExpiresAt: base.Add(time.Minute), CreatedAt: base.Add(time.Minute)}))
		mustNil(t, s.PutRevocation(ctx, Revocation{Kind: "sid", ID: "s1", ExpiresAt: base.Add(5 * time.Hour), CreatedAt: base.Add(time.Minute)}))
		mustNil(t, s.PutRevocation(ctx, Revocation{Kind: "jti", ID: "j3", ExpiresAt: base.Add(time.Minute)}))
		r2.ExpiresAt = base.Add(5 * time.Hour)
		got, err := s.Revocations(ctx, base)
		mustNil(t, err)
		equal(t, "after recording again", got, mapSlice([]Revocation{r1, r3, r2}, utcRevocation))
		// A zero expiry makes an expiring revocation permanent.
		mustNil(t, s.PutRevocation(ctx, Revocation{Kind: "jti", ID: "j1"}))
		got, err = s.Revocations(ctx, base.Add(10*time.Hour))
		mustNil(t, err)
		r1.ExpiresAt = time.Time{}
		equal(t, "after making j1 permanent", got, mapSlice([]Revocation{r1, r3}, utcRevocation))

		_, err = s.Revocations(ctx, time.Time{})
		wantErr(t, err, "store: list revocations: now is the zero time")
		for _, tc := range []struct {
			name string
			r    Revocation
			want string
		}{
			{"bad kind", Revocation{Kind: "sub", ID: "x"}, `store: put revocation: kind is neither "jti" nor "sid"`},
			{"empty id", Revocation{Kind: "sid"}, "store: put revocation: id is empty"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				wantErr(t, s.PutRevocation(ctx, tc.r), tc.want)
			})
		}
	})

	t.Run("UseJTI", func(t *testing.T) {
		s := open(t)
		exp := base.Add(5 * time.Minute)
		for _, tc := range []struct {
			name, issuer, jti string
			exp               time.Time
			want              string
		}{
			{"first use", "https://iss", "j1", exp, ""},
			{"replay", "https://iss", "j1", exp, "store: identifier already used"},
			{"replay with another exp", "https://iss", "j1", exp.Add(time.Hour), "store: identifier already used"},
			{"same jti, other issuer", "https://other", "j1", exp, ""},
			{"other jti", "https://iss", "j2", exp, ""},
			{"zero exp", "https://iss", "j3", time.Time{}, ""},
			{"zero exp replay", "https://iss", "j3", exp, "store: identifier already used"},
			{"empty issuer", "", "j4", exp, "store: use jti: issuer is empty"},
			{"empty jti", "https://iss", "", exp, "store: use jti: jti is empty"},
			{"long jti", "https://iss", strings.Repeat("j", 2049), exp, "store: use jti: jti is longer than 2048 bytes"},
			{"nul in jti", "https://iss", "j\x00", exp, "store: use jti: jti contains a NUL byte"},
			{"exp out of range", "https://iss", "j5", time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC),
				"store: use jti: exp: time outside the storable range (years 1677 to 2262)"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				err := s.UseJTI(ctx, tc.issuer, tc.jti, tc.exp)
				wantErr(t, err, tc.want)
				if tc.want == ErrReplay.Error() && err != ErrReplay {
					t.Fatalf("error is %#v, want ErrReplay itself", err)
				}
			})
		}
	})

	t.Run("UseJTIConcurrent", func(t *testing.T) {
		s := open(t)
		const n = 50
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				errs[i] = s.UseJTI(ctx, "https://iss", "contended", base.Add(time.Minute))
			})
		}
		close(start)
		wg.Wait()
		wins := 0
		for _, err := range errs {
			switch {
			case err == nil:
				wins++
			case !errors.Is(err, ErrReplay):
				t.Fatalf("unexpected error: %v", err)
			}
		}
		equal(t, "winners", wins, 1)
	})

	t.Run("ClientSecrets", func(t *testing.T) {
		s := open(t)
		c1 := ClientSecret{ClientID: "spiffe://example.org/ns/a/sa/b", Hash: []byte("h1"), CreatedAt: base}
		c2 := ClientSecret{ClientID: "app", Hash: []byte("h2"), CreatedAt: base, ExpiresAt: base.Add(time.Hour)}
		c3 := ClientSecret{ClientID: "Zed", Hash: []byte("h3")}
		c4 := ClientSecret{ClientID: "_x", Hash: []byte("h4")}
		for _, c := range []ClientSecret{c1, c2, c3, c4} {
			mustNil(t, s.PutClientSecret(ctx, c))
		}
		got, err := s.ClientSecrets(ctx)
		mustNil(t, err)
		equal(t, "by client id, byte-wise", got, mapSlice([]ClientSecret{c3, c4, c2, c1}, utcSecret))
		mustNil(t, s.DeleteClientSecret(ctx, c3.ClientID))
		mustNil(t, s.DeleteClientSecret(ctx, c4.ClientID))

		c2.Hash, c2.ExpiresAt = []byte("rotated"), time.Time{}
		mustNil(t, s.PutClientSecret(ctx, c2))
		mustNil(t, s.DeleteClientSecret(ctx, c1.ClientID))
		mustNil(t, s.DeleteClientSecret(ctx, "missing"))
		got, err = s.ClientSecrets(ctx)
		mustNil(t, err)
		equal(t, "after replace and delete", got, mapSlice([]ClientSecret{c2}, utcSecret))

		wantErr(t, s.PutClientSecret(ctx, ClientSecret{Hash: []byte("h")}), "store: put client secret: client id is empty")
		wantErr(t, s.PutClientSecret(ctx, ClientSecret{ClientID: "x"}), "store: put client secret: hash is empty")
	})

	t.Run("JoinTokens", func(t *testing.T) {
		s := open(t)
		tok := JoinToken{Hash: "aa01", SPIFFEID: "spiffe://example.org/node/1", CreatedAt: base, ExpiresAt: base.Add(time.Hour)}
		short := JoinToken{Hash: "bb02", SPIFFEID: "spiffe://example.org/node/2", CreatedAt: base, ExpiresAt: base.Add(time.Minute)}
		mustNil(t, s.PutJoinToken(ctx, tok))
		mustNil(t, s.PutJoinToken(ctx, short))
		err := s.PutJoinToken(ctx, tok)
		wantErr(t, err, "store: put join token: a join token with this hash already exists")
		if !errors.Is(err, errDuplicateJoinToken) {
			t.Fatalf("error %v is not errDuplicateJoinToken", err)
		}

		now := base.Add(30 * time.Minute)
		got, err := s.ConsumeJoinToken(ctx, tok.Hash, now)
		mustNil(t, err)
		want := tok
		want.UsedAt = now
		equal(t, "consumed token", got, utcJoin(want))

		for _, tc := range []struct {
			name, hash string
			now        time.Time
			want       string
		}{
			{"used before", tok.Hash, now, "store: not found"},
			{"at its expiry", short.Hash, short.ExpiresAt, "store: not found"},
			{"after its expiry", short.Hash, short.ExpiresAt.Add(time.Nanosecond), "store: not found"},
			{"unknown", "cc03", now, "store: not found"},
			{"empty hash", "", now, "store: not found"},
			{"overlong hash", strings.Repeat("a", 4096), now, "store: not found"},
			{"zero now", short.Hash, time.Time{}, "store: consume join token: now is the zero time"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				_, err := s.ConsumeJoinToken(ctx, tc.hash, tc.now)
				wantErr(t, err, tc.want)
				if tc.want == ErrNotFound.Error() && err != ErrNotFound {
					t.Fatalf("error is %#v, want ErrNotFound itself", err)
				}
			})
		}
		// One nanosecond before its expiry the short token still works.
		got, err = s.ConsumeJoinToken(ctx, short.Hash, short.ExpiresAt.Add(-time.Nanosecond))
		mustNil(t, err)
		equal(t, "last-moment use", got.UsedAt, short.ExpiresAt.Add(-time.Nanosecond).UTC())

		// A token stored as used cannot be consumed.
		used := JoinToken{Hash: "dd04", SPIFFEID: "spiffe://example.org/node/4", ExpiresAt: base.Add(time.Hour), UsedAt: base}
		mustNil(t, s.PutJoinToken(ctx, used))
		_, err = s.ConsumeJoinToken(ctx, used.Hash, now)
		wantErr(t, err, "store: not found")

		for _, tc := range []struct {
			name string
			tok  JoinToken
			want string
		}{
			{"empty hash", JoinToken{SPIFFEID: "spiffe://x/y", ExpiresAt: base}, "store: put join token: hash is empty"},
			{"empty spiffe id", JoinToken{Hash: "ee05", ExpiresAt: base}, "store: put join token: spiffe id is empty"},
			{"zero expiry", JoinToken{Hash: "ee05", SPIFFEID: "spiffe://x/y"}, "store: put join token: expires at is zero"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				wantErr(t, s.PutJoinToken(ctx, tc.tok), tc.want)
			})
		}
	})

	t.Run("ConsumeJoinTokenConcurrent", func(t *testing.T) {
		s := open(t)
		tok := JoinToken{Hash: "ff06", SPIFFEID: "spiffe://example.org/node/6", CreatedAt: base, ExpiresAt: base.Add(time.Hour)}
		mustNil(t, s.PutJoinToken(ctx, tok))
		const n = 50
		errs := make([]error, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				_, errs[i] = s.ConsumeJoinToken(ctx, tok.Hash, base.Add(time.Duration(i)*time.Second))
			})
		}
		close(start)
		wg.Wait()
		wins := 0
		for _, err := range errs {
			switch {
			case err == nil:
				wins++
			case !errors.Is(err, ErrNotFound):
				t.Fatalf("unexpected error: %v", err)
			}
		}
		equal(t, "winners", wins, 1)
	})

	t.Run("Agents", func(t *testing.T) {
		s := open(t)
		const id = "spiffe://example.org/postern/agent/node-1"
		_, err := s.Agent(ctx, id)
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("missing agent: %v", err)
		}
		a := Agent{SPIFFEID: id, Method: "join_token", AttestedAt: base, Serial: "s1", ExpiresAt: base.Add(time.Hour)}
		mustNil(t, s.PutAgent(ctx, a))
		got, err := s.Agent(ctx, id)
		mustNil(t, err)
		equal(t, "agent", utcAgent(got), utcAgent(a))

		// Renewal from the current serial rotates both.
		ok, err := s.RenewAgent(ctx, id, "s1", "s2", base.Add(2*time.Hour))
		mustNil(t, err)
		equal(t, "renewed from s1", ok, true)
		got, _ = s.Agent(ctx, id)
		equal(t, "serials after renewal", [2]string{got.Serial, got.PrevSerial}, [2]string{"s2", "s1"})
		equal(t, "expiry after renewal", utc(got.ExpiresAt), utc(base.Add(2*time.Hour)))
		// From the previous one (the answer to the last renewal was lost).
		ok, err = s.RenewAgent(ctx, id, "s1", "s3", base.Add(3*time.Hour))
		mustNil(t, err)
		equal(t, "renewed from the previous serial", ok, true)
		// Not from an older one, nor for an unknown agent.
		for _, tc := range []struct{ id, old string }{{id, "s2"}, {id, "s0"}, {"spiffe://example.org/postern/agent/ghost", "s1"}} {
			ok, err = s.RenewAgent(ctx, tc.id, tc.old, "sx", base.Add(4*time.Hour))
			mustNil(t, err)
			equal(t, "renewed "+tc.id+" from "+tc.old, ok, false)
		}
		got, _ = s.Agent(ctx, id)
		equal(t, "serials", [2]string{got.Serial, got.PrevSerial}, [2]string{"s3", "s1"})
		// Once s3 is used, s1 (a copy kept elsewhere, say) may not renew.
		mustNil(t, s.ConfirmAgent(ctx, id, "s1")) // stale: nothing changes
		got, _ = s.Agent(ctx, id)
		equal(t, "after a stale confirmation", got.PrevSerial, "s1")
		mustNil(t, s.ConfirmAgent(ctx, id, "s3"))
		got, _ = s.Agent(ctx, id)
		equal(t, "after confirmation", [2]string{got.Serial, got.PrevSerial}, [2]string{"s3", ""})
		ok, err = s.RenewAgent(ctx, id, "s1", "sx", base.Add(4*time.Hour))
		mustNil(t, err)
		equal(t, "renewed from a serial confirmed away", ok, false)
		ok, _ = s.RenewAgent(ctx, id, "", "sx", base.Add(4*time.Hour))
		equal(t, "renewed from an empty serial", ok, false)

		// A new attestation replaces the record and its serials.
		mustNil(t, s.PutAgent(ctx, Agent{SPIFFEID: id, Method: "k8s_psat", AttestedAt: base.Add(time.Hour), Serial: "n1", ExpiresAt: base.Add(5 * time.Hour)}))
		ok, _ = s.RenewAgent(ctx, id, "s3", "sx", base.Add(6*time.Hour))
		equal(t, "renewed from a serial of the earlier attestation", ok, false)
		mustNil(t, s.PutAgent(ctx, Agent{SPIFFEID: "spiffe://example.org/postern/agent/node-0", Method: "join_token", Serial: "z", ExpiresAt: base.Add(time.Hour)}))
		all, err := s.Agents(ctx)
		mustNil(t, err)
		equal(t, "agents", len(all), 2)
		equal(t, "ordered", all[0].SPIFFEID, "spiffe://example.org/postern/agent/node-0")

		wantErr(t, s.PutAgent(ctx, Agent{SPIFFEID: id, Method: "join_token", ExpiresAt: base}), "store: put agent: serial is empty")
		mustNil(t, s.DeleteAgent(ctx, id))
		mustNil(t, s.DeleteAgent(ctx, id))
		_, err = s.Agent(ctx, id)
		if !errors.Is(err, ErrNotFound) {
			t.Fatalf("evicted agent: %v", err)
		}
		ok, _ = s.RenewAgent(ctx, id, "n1", "n2", base.Add(6*time.Hour))
		equal(t, "renewed after eviction", ok, false)
	})

	t.Run("Purge", func(t *testing.T) {
		s := open(t)
		now := base.Add(time.Hour)
		past, future := now.Add(-time.Nanosecond), now.Add(time.Minute)
		for _, r := range []Revocation{
			{Kind: "jti", ID: "expired", ExpiresAt: past},
			{Kind: "jti", ID: "at-now", ExpiresAt: now},
			{Kind: "sid", ID: "live", ExpiresAt: future},
			{Kind: "sid", ID: "forever"},
		} {
			mustNil(t, s.PutRevocation(ctx, r))
		}
		mustNil(t, s.UseJTI(ctx, "iss", "expired", past))
		mustNil(t, s.UseJTI(ctx, "iss", "live", future))
		mustNil(t, s.UseJTI(ctx, "iss", "forever", time.Time{}))
		for _, j := range []JoinToken{
			{Hash: "expired", SPIFFEID: "spiffe://x/1", ExpiresAt: past},
			{Hash: "expired-used", SPIFFEID: "spiffe://x/2", ExpiresAt: past, UsedAt: base},
			{Hash: "live", SPIFFEID: "spiffe://x/3", ExpiresAt: future},
			{Hash: "live-used", SPIFFEID: "spiffe://x/4", ExpiresAt: future, UsedAt: base},
		} {
			mustNil(t, s.PutJoinToken(ctx, j))
		}
		mustNil(t, s.PutAgent(ctx, Agent{SPIFFEID: "spiffe://x/agent/expired", Method: "join_token", Serial: "a", ExpiresAt: past}))
		mustNil(t, s.PutAgent(ctx, Agent{SPIFFEID: "spiffe://x/agent/live", Method: "join_token", Serial: "b", ExpiresAt: future}))
		// Unrelated records are untouched.
		mustNil(t, s.PutSigningKey(ctx, SigningKey{ID: "k", Algorithm: "ES256", ExpireAt: past}))
		mustNil(t, s.PutClientSecret(ctx, ClientSecret{ClientID: "c", Hash: []byte("h"), ExpiresAt: past}))

		wantErr(t, s.Purge(ctx, time.Time{}), "store: purge: now is the zero time")
		mustNil(t, s.Purge(ctx, now))

		revs, err := s.Revocations(ctx, base)
		mustNil(t, err)
		var ids []string
		for _, r := range revs {
			ids = append(ids, r.ID)
		}
		equal(t, "revocations left", ids, []string{"at-now", "forever", "live"})

		for _, tc := range []struct{ jti, want string }{
			{"expired", ""}, // purged: usable again
			{"live", "store: identifier already used"},
			{"forever", "store: identifier already used"},
		} {
			wantErr(t, s.UseJTI(ctx, "iss", tc.jti, future), tc.want)
		}
		for _, tc := range []struct{ hash, want string }{
			{"expired", ""}, // purged: the hash is free again
			{"expired-used", ""},
			{"live", "store: put join token: a join token with this hash already exists"},
			{"live-used", "store: put join token: a join token with this hash already exists"},
		} {
			wantErr(t, s.PutJoinToken(ctx, JoinToken{Hash: tc.hash, SPIFFEID: "spiffe://x/9", ExpiresAt: future}), tc.want)
		}
		keys, err := s.SigningKeys(ctx)
		mustNil(t, err)
		equal(t, "signing keys left", len(keys), 1)
		secrets, err := s.ClientSecrets(ctx)
		mustNil(t, err)
		equal(t, "client secrets left", len(secrets), 1)
		agents, err := s.Agents(ctx)
		mustNil(t, err)
		equal(t, "agents left", len(agents), 1)
	})

	t.Run("ZeroTimesAndEmptyBytes", func(t *testing.T) {
		s := open(t)
		mustNil(t, s.PutSigningKey(ctx, SigningKey{ID: "k", Algorithm: "ES256", Public: []byte{}}))
		mustNil(t, s.PutAuthority(ctx, Authority{ID: "a", ChainDER: [][]byte{}}))
		mustNil(t, s.PutClientSecret(ctx, ClientSecret{ClientID: "c", Hash: []byte{1}}))
		mustNil(t, s.PutRevocation(ctx, Revocation{Kind: "sid", ID: "s"}))
		keys, err := s.SigningKeys(ctx)
		mustNil(t, err)
		equal(t, "signing key", keys, []SigningKey{{ID: "k", Algorithm: "ES256"}})
		auths, err := s.Authorities(ctx)
		mustNil(t, err)
		equal(t, "authority", auths, []Authority{{ID: "a"}})
		secrets, err := s.ClientSecrets(ctx)
		mustNil(t, err)
		equal(t, "client secret", secrets, []ClientSecret{{ClientID: "c", Hash: []byte{1}}})
		revs, err := s.Revocations(ctx, base)
		mustNil(t, err)
		equal(t, "revocation", revs, []Revocation{{Kind: "sid", ID: "s"}})
	})

	t.Run("TimePrecision", func(t *testing.T) {
		s := open(t)
		times := []time.Time{
			time.Unix(0, 1).UTC(), // one nanosecond after the epoch
			time.Unix(0, -1),      // one before
			time.Date(1677, 9, 22, 0, 0, 0, 0, time.UTC),
			time.Date(2262, 4, 11, 0, 0, 0, 0, time.UTC),
			base,
			time.Now(), // with a monotonic reading
		}
		for i, tm := range times {
			mustNil(t, s.PutSigningKey(ctx, SigningKey{ID: fmt.Sprint(i), Algorithm: "ES256", CreatedAt: tm, ExpireAt: tm}))
		}
		keys, err := s.SigningKeys(ctx)
		mustNil(t, err)
		equal(t, "count", len(keys), len(times))
		for _, k := range keys {
			var i int
			fmt.Sscan(k.ID, &i)
			if !k.ExpireAt.Equal(times[i]) || k.ExpireAt.Location() != time.UTC {
				t.Errorf("key %d: ExpireAt = %v, want %v in UTC", i, k.ExpireAt, times[i])
			}
		}
	})

	t.Run("Canceled", func(t *testing.T) {
		s := open(t)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		for name, err := range map[string]error{
			"UseJTI":        s.UseJTI(cctx, "iss", "j", base),
			"PutSigningKey": s.PutSigningKey(cctx, SigningKey{ID: "k", Algorithm: "ES256"}),
			"Purge":         s.Purge(cctx, base),
			"SigningKeys":   func() error { _, err := s.SigningKeys(cctx); return err }(),
		} {
			if !errors.Is(err, context.Canceled) {
				t.Errorf("%s: error = %v, want context.Canceled", name, err)
			}
		}
		// Nothing was recorded.
		mustNil(t, s.UseJTI(ctx, "iss", "j", base))
	})

	t.Run("Closed", func(t *testing.T) {
		s := open(t)
		mustNil(t, s.Close())
		if err := s.UseJTI(ctx, "iss", "j", base); err == nil {
			t.Fatal("UseJTI on a closed store succeeded")
		}
		if _, err := s.SigningKeys(ctx); err == nil {
			t.Fatal("SigningKeys on a closed store succeeded")
		}
	})
}
