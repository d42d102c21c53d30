package keys

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"

	"postern.dev/postern/internal/store"
)

// sign makes a compact JWS with k, as the token package would.
func sign(t testing.TB, k *Key) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: k.Algorithm, Key: jose.JSONWebKey{Key: k.Signer, KeyID: k.ID}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := s.Sign([]byte(`{"sub":"alice"}`))
	if err != nil {
		t.Fatal(err)
	}
	tok, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// verify checks tok against the key m publishes for its kid.
func verify(m *Manager, tok string) error {
	obj, err := jose.ParseSignedCompact(tok, []jose.SignatureAlgorithm{jose.ES256, jose.EdDSA})
	if err != nil {
		return err
	}
	kid := obj.Signatures[0].Header.KeyID
	jwk, ok := m.PublicKey(kid)
	if !ok {
		return fmt.Errorf("unknown kid %s", kid)
	}
	_, err = obj.Verify(jwk)
	return err
}

func kids(m *Manager) []string {
	var out []string
	for _, k := range m.KeySet().Keys {
		out = append(out, k.KeyID)
	}
	return out
}

func TestNewManagerFirstStart(t *testing.T) {
	st, clk := newFakeStore(), newFakeClock()
	cfg := testConfig(t, st, clk)
	m := newTestManager(t, cfg)
	now := clk.Now()

	cur := m.Current()
	set := m.KeySet()
	if len(set.Keys) != 2 {
		t.Fatalf("key set has %d keys, want current and next", len(set.Keys))
	}
	if set.Keys[0].KeyID != cur.ID {
		t.Fatalf("first published key %s, want current %s", set.Keys[0].KeyID, cur.ID)
	}
	for _, k := range set.Keys {
		if k.Algorithm != "ES256" || k.Use != "sig" || !k.IsPublic() || !k.Valid() {
			t.Fatalf("published key %+v", k)
		}
		kid, err := thumbprint(k.Key)
		if err != nil || kid != k.KeyID {
			t.Fatalf("kid %s is not the thumbprint %s", k.KeyID, kid)
		}
	}
	if _, ok := cur.Signer.(*ecdsa.PrivateKey); !ok || cur.Algorithm != jose.ES256 {
		t.Fatalf("current key is %T %s", cur.Signer, cur.Algorithm)
	}
	curRec, _ := st.get(cur.ID)
	nextRec, _ := st.get(set.Keys[1].KeyID)
	if !curRec.ActivateAt.Equal(now) || !nextRec.ActivateAt.Equal(now.Add(24*time.Hour)) {
		t.Fatalf("activate at %v and %v", curRec.ActivateAt, nextRec.ActivateAt)
	}
	if curRec.KEKID != cfg.KEK.ID() || curRec.Algorithm != "ES256" || !curRec.CreatedAt.Equal(now) {
		t.Fatalf("record %+v", curRec)
	}
	var parsed jose.JSONWebKeySet
	if err := json.Unmarshal(m.JWKS(), &parsed); err != nil {
		t.Fatal(err)
	}
	if len(parsed.Keys) != 2 || parsed.Keys[0].KeyID != cur.ID || !parsed.Keys[1].IsPublic() {
		t.Fatalf("JWKS %s", m.JWKS())
	}
	if bytes.Contains(m.JWKS(), []byte(`"d"`)) {
		t.Fatalf("JWKS holds a private parameter: %s", m.JWKS())
	}
	if m.MaxAge() != time.Hour {
		t.Fatalf("MaxAge %v", m.MaxAge())
	}
	if err := verify(m, sign(t, cur)); err != nil {
		t.Fatal(err)
	}
}

func TestRotationOverlap(t *testing.T) {
	for _, alg := range []string{"ES256", "EdDSA"} {
		t.Run(alg, func(t *testing.T) {
			ctx := context.Background()
			st, clk := newFakeStore(), newFakeClock()
			cfg := testConfig(t, st, clk)
			cfg.Algorithm = alg
			m := newTestManager(t, cfg)
			start := clk.Now()
			const (
				lead     = time.Hour
				lifetime = 24*time.Hour + 5*time.Minute
				step     = 10 * time.Minute
			)
			firstSeen := map[string]time.Time{}
			for _, kid := range kids(m) {
				firstSeen[kid] = start
			}
			first := m.Current()
			if string(first.Algorithm) != alg {
				t.Fatalf("algorithm %s", first.Algorithm)
			}
			tok := sign(t, first)
			var retiredAt time.Time
			prev, rotations := first.ID, 0
			for now := start.Add(step); !now.After(start.Add(4 * 24 * time.Hour)); now = now.Add(step) {
				clk.Advance(step)
				if err := m.tick(ctx); err != nil {
					t.Fatal(err)
				}
				for _, kid := range kids(m) {
					if _, ok := firstSeen[kid]; !ok {
						firstSeen[kid] = now
					}
				}
				cur := m.Current()
				set := kids(m)
				if set[0] != cur.ID || len(set) > 4 { // current, next, two retired for 5 minutes
					t.Fatalf("%v: key set %v, current %s", now.Sub(start), set, cur.ID)
				}
				if cur.ID != prev {
					rotations++
					if published := now.Sub(firstSeen[cur.ID]); published < lead {
						t.Fatalf("%v: key %s signs after being published only %v", now.Sub(start), cur.ID, published)
					}
					if prev == first.ID {
						retiredAt = now
					}
					prev = cur.ID
				}
				err := verify(m, tok)
				if retiredAt.IsZero() || now.Before(retiredAt.Add(lifetime)) {
					if err != nil {
						t.Fatalf("%v: token of the first key no longer verifies: %v", now.Sub(start), err)
					}
					continue
				}
				if err == nil || err.Error() != "unknown kid "+first.ID {
					t.Fatalf("%v: token of an expired key: %v", now.Sub(start), err)
				}
				if _, ok := st.get(first.ID); ok {
					t.Fatalf("%v: expired key still stored", now.Sub(start))
				}
			}
			if !retiredAt.Equal(start.Add(24*time.Hour)) || rotations != 4 {
				t.Fatalf("first key retired at %v, %d rotations", retiredAt.Sub(start), rotations)
			}
			if st.len() != 4 { // the key retired a day ago expires in 5 minutes
				t.Fatalf("store holds %d keys, want current, next and two retired", st.len())
			}
			if alg == "EdDSA" {
				if _, ok := m.Current().Signer.(ed25519.PrivateKey); !ok {
					t.Fatalf("signer %T", m.Current().Signer)
				}
				if k, _ := m.PublicKey(m.Current().ID); k.Algorithm != "EdDSA" {
					t.Fatalf("published alg %s", k.Algorithm)
				}
			}
		})
	}
}

func TestTickIdempotent(t *testing.T) {
	ctx := context.Background()
	st, clk := newFakeStore(), newFakeClock()
	m := newTestManager(t, testConfig(t, st, clk))
	check := func(name string) {
		t.Helper()
		w, d := st.ops()
		if err := m.tick(ctx); err != nil {
			t.Fatal(err)
		}
		if w2, d2 := st.ops(); w2 != w || d2 != d {
			t.Fatalf("%s: tick at the same instant wrote %d and deleted %d", name, w2-w, d2-d)
		}
	}
	check("after start")
	clk.Advance(24 * time.Hour)
	w, _ := st.ops()
	if err := m.tick(ctx); err != nil {
		t.Fatal(err)
	}
	if w2, _ := st.ops(); w2 != w+2 { // retire the first key, create a next key
		t.Fatalf("activation wrote %d records, want 2", w2-w)
	}
	check("after activation")
}

func TestLateTick(t *testing.T) {
	ctx := context.Background()
	st, clk := newFakeStore(), newFakeClock()
	m := newTestManager(t, testConfig(t, st, clk))
	first, next := m.Current().ID, kids(m)[1]
	clk.Advance(47*time.Hour + 30*time.Minute) // the replica slept through a rotation
	if err := m.tick(ctx); err != nil {
		t.Fatal(err)
	}
	if m.Current().ID != next {
		t.Fatalf("current %s, want the published next key %s", m.Current().ID, next)
	}
	newNext, _ := st.get(kids(m)[1])
	if got := newNext.ActivateAt.Sub(clk.Now()); got != 30*time.Minute+30*time.Minute {
		// max(activation of current + 24h, now + lead) = now + 1h
		t.Fatalf("new next activates in %v, want 1h", got)
	}
	if _, ok := m.PublicKey(first); !ok {
		t.Fatal("the first key left the key set before its tokens expired")
	}
}

func TestRotate(t *testing.T) {
	ctx := context.Background()
	st, clk := newFakeStore(), newFakeClock()
	m := newTestManager(t, testConfig(t, st, clk))
	old := m.Current()
	next := kids(m)[1]
	tok := sign(t, old)
	clk.Advance(time.Minute)
	now := clk.Now()
	if err := m.Rotate(ctx, false); err != nil {
		t.Fatal(err)
	}
	if m.Current().ID != next {
		t.Fatalf("current %s, want former next %s", m.Current().ID, next)
	}
	set := kids(m)
	if len(set) != 3 || set[0] != next || set[2] != old.ID {
		t.Fatalf("key set %v", set)
	}
	if err := verify(m, tok); err != nil {
		t.Fatalf("old token after rotation: %v", err)
	}
	oldRec, _ := st.get(old.ID)
	if !oldRec.RetireAt.Equal(now) || !oldRec.ExpireAt.Equal(now.Add(24*time.Hour+5*time.Minute)) {
		t.Fatalf("old key retire %v expire %v", oldRec.RetireAt, oldRec.ExpireAt)
	}
	newNext, _ := st.get(set[1])
	if !newNext.ActivateAt.Equal(now.Add(24 * time.Hour)) {
		t.Fatalf("new next activates at %v", newNext.ActivateAt)
	}
	clk.Advance(24*time.Hour + 4*time.Minute)
	if err := m.tick(ctx); err != nil {
		t.Fatal(err)
	}
	if err := verify(m, tok); err != nil {
		t.Fatalf("old token before expiry: %v", err)
	}
	clk.Advance(time.Minute)
	if err := m.tick(ctx); err != nil {
		t.Fatal(err)
	}
	if err := verify(m, tok); err == nil {
		t.Fatal("old token verifies after its key expired")
	}
}

func TestRotateRevokeOld(t *testing.T) {
	ctx := context.Background()
	st, clk := newFakeStore(), newFakeClock()
	m := newTestManager(t, testConfig(t, st, clk))
	var toks []string
	for range 2 {
		toks = append(toks, sign(t, m.Current()))
		clk.Advance(time.Minute)
		if err := m.Rotate(ctx, false); err != nil {
			t.Fatal(err)
		}
	}
	if len(kids(m)) != 4 {
		t.Fatalf("before revocation: %v", kids(m))
	}
	compromised := m.Current()
	toks = append(toks, sign(t, compromised))
	next := kids(m)[1]
	clk.Advance(time.Minute)
	if err := m.Rotate(ctx, true); err != nil {
		t.Fatal(err)
	}
	if cur := m.Current().ID; cur == next || cur == compromised.ID || len(kids(m)) != 2 || st.len() != 2 {
		t.Fatalf("after revocation: current %s (want a fresh key), key set %v, %d stored", cur, kids(m), st.len())
	}
	if _, ok := m.PublicKey(next); ok {
		t.Fatal("the old next key, held unsealed by every replica, is still published")
	}
	for i, tok := range toks {
		if err := verify(m, tok); err == nil {
			t.Fatalf("token %d still verifies after revokeOld", i)
		}
	}
	if _, ok := m.PublicKey(compromised.ID); ok {
		t.Fatal("revoked key still published")
	}
	if err := verify(m, sign(t, m.Current())); err != nil {
		t.Fatal(err)
	}
}

func TestRotateRevokeOldPartialFailure(t *testing.T) {
	ctx := context.Background()
	st, clk := newFakeStore(), newFakeClock()
	m := newTestManager(t, testConfig(t, st, clk))
	old := m.Current().ID
	next := kids(m)[1]
	st.mu.Lock()
	st.delErr = errors.New("nope")
	st.mu.Unlock()
	err := m.Rotate(ctx, true)
	if err == nil || !strings.Contains(err.Error(), "keys: deleting key "+old+": nope") || !strings.Contains(err.Error(), "keys: deleting key "+next+": nope") {
		t.Fatalf("err = %v, want failed deletes of %s and %s", err, old, next)
	}
	// The revoked keys are marked expired: they neither sign nor verify,
	// and the next tick deletes them.
	if cur := m.Current().ID; cur == next || cur == old {
		t.Fatal("no fresh key signs")
	}
	for _, kid := range []string{old, next} {
		if _, ok := m.PublicKey(kid); ok || len(kids(m)) != 2 {
			t.Fatalf("key set after a failed delete %v", kids(m))
		}
	}
	st.mu.Lock()
	st.delErr = nil
	st.mu.Unlock()
	if err := m.tick(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := st.get(old); ok || st.len() != 2 {
		t.Fatal("revoked key not deleted by the next tick")
	}
}

func TestRotateWhenReReadFails(t *testing.T) {
	ctx := context.Background()
	st, clk := newFakeStore(), newFakeClock()
	m := newTestManager(t, testConfig(t, st, clk))
	if err := m.Rotate(ctx, false); err != nil {
		t.Fatal(err)
	}
	old, retired, next := m.Current().ID, kids(m)[2], kids(m)[1]
	reads := 0
	st.mu.Lock()
	st.readErr = func() error {
		if reads++; reads == 2 {
			return errors.New("flaky")
		}
		return nil
	}
	st.mu.Unlock()
	err := m.Rotate(ctx, true)
	if err == nil || err.Error() != "keys: re-reading signing keys: flaky" {
		t.Fatalf("err = %v", err)
	}
	// The state follows the writes that succeeded: a fresh key signs, and
	// the previous next key (unsealed on every replica) is revoked too.
	if cur := m.Current().ID; cur == next || cur == old || cur == retired || len(kids(m)) != 2 {
		t.Fatalf("current %s (want a fresh key), key set %v", cur, kids(m))
	}
	for _, kid := range []string{old, retired, next} {
		if _, ok := m.PublicKey(kid); ok {
			t.Fatalf("revoked key %s still published", kid)
		}
	}
}

func TestRefreshPicksUpOtherReplica(t *testing.T) {
	ctx := context.Background()
	st, clk := newFakeStore(), newFakeClock()
	cfg := testConfig(t, st, clk)
	a := newTestManager(t, cfg)
	b := newTestManager(t, cfg)
	if st.len() != 2 || a.Current().ID != b.Current().ID {
		t.Fatalf("second replica created keys: %d stored", st.len())
	}
	old := a.Current().ID
	if err := a.Rotate(ctx, false); err != nil {
		t.Fatal(err)
	}
	if b.Current().ID != old {
		t.Fatal("b changed without refresh")
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if b.Current().ID != a.Current().ID || !bytes.Equal(a.JWKS(), b.JWKS()) {
		t.Fatalf("b after refresh: current %s, want %s\n%s\n%s", b.Current().ID, a.Current().ID, b.JWKS(), a.JWKS())
	}
	if err := a.Rotate(ctx, true); err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := b.PublicKey(old); ok || b.Current().ID != a.Current().ID {
		t.Fatal("b did not pick up the revocation")
	}
}

func TestReplicasConverge(t *testing.T) {
	ctx := context.Background()
	st, clk := newFakeStore(), newFakeClock()
	cfg := testConfig(t, st, clk)
	a := newTestManager(t, cfg)
	st.stale = [][]store.SigningKey{nil} // b read the empty store before a wrote
	b := newTestManager(t, cfg)
	if st.len() != 4 {
		t.Fatalf("race produced %d keys, want 4", st.len())
	}
	if err := a.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if a.Current().ID != b.Current().ID {
		t.Fatalf("replicas disagree: %s and %s", a.Current().ID, b.Current().ID)
	}
	for _, m := range []*Manager{a, b} {
		if err := m.tick(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if st.len() != 3 { // current, the losing current (retired, it may have signed), one next
		t.Fatalf("after ticks %d keys", st.len())
	}
	w, d := st.ops()
	for _, m := range []*Manager{a, b} {
		if err := m.tick(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if w2, d2 := st.ops(); w2 != w || d2 != d {
		t.Fatal("converged replicas keep writing")
	}
	if !bytes.Equal(a.JWKS(), b.JWKS()) {
		t.Fatalf("key sets differ:\n%s\n%s", a.JWKS(), b.JWKS())
	}
	clk.Advance(24 * time.Hour)
	for _, m := range []*Manager{b, a} {
		if err := m.tick(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if a.Current().ID != b.Current().ID || !bytes.Equal(a.JWKS(), b.JWKS()) {
		t.Fatal("replicas disagree after activation")
	}
}

func TestStoreErrorsKeepLastGoodState(t *testing.T) {
	ctx := context.Background()
	st, clk := newFakeStore(), newFakeClock()
	m := newTestManager(t, testConfig(t, st, clk))
	cur, jwks := m.Current(), m.JWKS()
	down := errors.New("db down")
	st.setErr(down)
	clk.Advance(25 * time.Hour)
	tests := []struct {
		name    string
		call    func() error
		wantErr string
	}{
		{"Refresh", func() error { return m.Refresh(ctx) }, "keys: reading signing keys: db down"},
		{"tick", func() error { return m.tick(ctx) }, "keys: reading signing keys: db down"},
		{"Rotate", func() error { return m.Rotate(ctx, true) }, "keys: rotate: reading signing keys: db down"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if err == nil || err.Error() != tt.wantErr || !errors.Is(err, down) {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			if m.Current() != cur || !bytes.Equal(m.JWKS(), jwks) {
				t.Fatal("state changed on a store error")
			}
		})
	}
	st.setErr(nil)
	if err := m.tick(ctx); err != nil {
		t.Fatal(err)
	}
	if m.Current().ID == cur.ID {
		t.Fatal("no rotation once the store is back")
	}
}

func TestStoreWriteErrorOnFirstStart(t *testing.T) {
	st, clk := newFakeStore(), newFakeClock()
	st.setErr(errors.New("read only"))
	_, err := NewManager(context.Background(), testConfig(t, st, clk))
	if err == nil || err.Error() != "keys: reading signing keys: read only" {
		t.Fatalf("err = %v", err)
	}
}

func TestUnsealErrors(t *testing.T) {
	st, clk := newFakeStore(), newFakeClock()
	cfg := testConfig(t, st, clk)
	m := newTestManager(t, cfg)
	curID, nextID := m.Current().ID, kids(m)[1]
	cur, _ := st.get(curID)
	next, _ := st.get(nextID)
	otherKEK := newTestKEK(t)

	tests := []struct {
		name    string
		kek     *KEK
		mutate  func(r *store.SigningKey)
		wantErr string
	}{
		{"other kek", otherKEK, func(*store.SigningKey) {},
			fmt.Sprintf("keys: signing key %s was sealed with key-encryption key %s, not %s", curID, cfg.KEK.ID(), otherKEK.ID())},
		{"sealed blob of another record", cfg.KEK, func(r *store.SigningKey) { r.Sealed = next.Sealed },
			"keys: signing key " + curID + ": sealed private key does not open (wrong key-encryption key, moved from another record, or modified)"},
		{"sealed blob modified", cfg.KEK, func(r *store.SigningKey) { r.Sealed = flip(r.Sealed, 20) },
			"keys: signing key " + curID + ": sealed private key does not open (wrong key-encryption key, moved from another record, or modified)"},
		{"kek id relabelled", cfg.KEK, func(r *store.SigningKey) { r.KEKID = otherKEK.ID() },
			fmt.Sprintf("keys: signing key %s was sealed with key-encryption key %s, not %s", curID, otherKEK.ID(), cfg.KEK.ID())},
		{"public key of another record", cfg.KEK, func(r *store.SigningKey) { r.Public = next.Public },
			"keys: signing key " + curID + ": kid is not the thumbprint of its public key"},
		{"public key garbage", cfg.KEK, func(r *store.SigningKey) { r.Public = []byte("junk") },
			"keys: signing key " + curID + ": public key does not parse"},
		{"wrong algorithm", cfg.KEK, func(r *store.SigningKey) { r.Algorithm = "EdDSA" },
			"keys: signing key " + curID + ": algorithm \"EdDSA\" does not match its key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := cur
			tt.mutate(&rec)
			st.set(rec)
			defer st.set(cur)
			c := cfg
			c.KEK = tt.kek
			_, err := NewManager(context.Background(), c)
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("err = %v\nwant  %s", err, tt.wantErr)
			}
			// A running manager keeps the key it unsealed before, or
			// its last good state.
			err = m.Refresh(context.Background())
			if err != nil && err.Error() != tt.wantErr {
				t.Fatalf("Refresh err = %v", err)
			}
			if m.Current().ID != curID {
				t.Fatal("state changed")
			}
		})
	}
}

func TestUnreadableRetiredKeyIsNotPublished(t *testing.T) {
	ctx := context.Background()
	st, clk := newFakeStore(), newFakeClock()
	m := newTestManager(t, testConfig(t, st, clk))
	old := m.Current().ID
	if err := m.Rotate(ctx, false); err != nil {
		t.Fatal(err)
	}
	rec, _ := st.get(old)
	rec.Public = []byte("junk")
	st.set(rec)
	if err := m.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.PublicKey(old); ok || len(kids(m)) != 2 {
		t.Fatalf("key set %v", kids(m))
	}
}

func TestAlgorithmChange(t *testing.T) {
	ctx := context.Background()
	st, clk := newFakeStore(), newFakeClock()
	cfg := testConfig(t, st, clk)
	newTestManager(t, cfg)
	cfg.Algorithm = "EdDSA"
	m := newTestManager(t, cfg)
	if m.Current().Algorithm != jose.ES256 {
		t.Fatal("stored key changed algorithm")
	}
	clk.Advance(24 * time.Hour)
	if err := m.tick(ctx); err != nil {
		t.Fatal(err)
	}
	if k, _ := m.PublicKey(kids(m)[1]); k.Algorithm != "EdDSA" {
		t.Fatalf("new next key is %s, want EdDSA", k.Algorithm)
	}
}

func TestConfigErrors(t *testing.T) {
	st, clk := newFakeStore(), newFakeClock()
	kek := newTestKEK(t)
	tests := []struct {
		name    string
		cfg     Config
		wantErr string
	}{
		{"no store", Config{KEK: kek}, "keys: config has no store"},
		{"no kek", Config{Store: st}, "keys: config has no key-encryption key"},
		{"RS256", Config{Store: st, KEK: kek, Algorithm: "RS256"}, `keys: unsupported algorithm "RS256" (want ES256 or EdDSA)`},
		{"negative", Config{Store: st, KEK: kek, MaxTokenLifetime: -time.Hour}, "keys: negative duration in config"},
		{"lead over period", Config{Store: st, KEK: kek, RotationPeriod: time.Hour, LeadTime: 2 * time.Hour},
			"keys: lead time 2h0m0s exceeds rotation period 1h0m0s"},
		{"lead over default period", Config{Store: st, KEK: kek, LeadTime: 25 * time.Hour},
			"keys: lead time 25h0m0s exceeds rotation period 24h0m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.cfg.Now = clk.Now
			_, err := NewManager(context.Background(), tt.cfg)
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
	if st.len() != 0 {
		t.Fatal("invalid config wrote keys")
	}
}

func TestKeyNeverPrinted(t *testing.T) {
	st, clk := newFakeStore(), newFakeClock()
	k := newTestManager(t, testConfig(t, st, clk)).Current()
	want := "Key(" + k.ID + ", ES256)"
	for _, s := range []string{fmt.Sprint(k), fmt.Sprint(*k), fmt.Sprintf("%+v", k)} {
		if s != want {
			t.Errorf("formatted %q, want %q", s, want)
		}
	}
	var buf bytes.Buffer
	slog.New(slog.NewJSONHandler(&buf, nil)).Info("x", "key", k)
	if !strings.Contains(buf.String(), `"key":{"kid":"`+k.ID+`","alg":"ES256"}`) || strings.Contains(buf.String(), `"D"`) {
		t.Errorf("logged %s", buf.String())
	}
}

func TestConcurrentUse(t *testing.T) {
	ctx := context.Background()
	st, clk := newFakeStore(), newFakeClock()
	m := newTestManager(t, testConfig(t, st, clk))
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-done:
					return
				default:
				}
				_ = m.Current()
				_, _ = m.PublicKey("kid")
				if s := m.state.Load(); s.set[0].KeyID != s.current.ID || s.byKID[s.current.ID].Key == nil {
					t.Error("inconsistent state: current key not published first")
					return
				}
				_ = m.KeySet()
				_ = m.JWKS()
			}
		})
	}
	for i := range 50 {
		clk.Advance(6 * time.Hour)
		var err error
		switch i % 3 {
		case 0:
			err = m.Rotate(ctx, i%2 == 0)
		case 1:
			err = m.tick(ctx)
		default:
			err = m.Refresh(ctx)
		}
		if err != nil {
			t.Error(err)
		}
	}
	close(done)
	wg.Wait()
}

func TestRun(t *testing.T) {
	st, clk := newFakeStore(), newFakeClock()
	m := newTestManager(t, testConfig(t, st, clk))
	first := m.Current().ID
	clk.Advance(24 * time.Hour) // the next key is due: Run ticks at once
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { m.Run(ctx); close(stopped) }()
	deadline := time.Now().Add(10 * time.Second)
	for m.Current().ID == first {
		if time.Now().After(deadline) {
			t.Fatal("Run did not activate the next key")
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
}

func TestWait(t *testing.T) {
	st, clk := newFakeStore(), newFakeClock()
	m := newTestManager(t, testConfig(t, st, clk))
	tests := []struct {
		name     string
		advance  time.Duration
		failures int
		want     time.Duration
	}{
		{"refresh interval", 0, 0, 30 * time.Second},
		{"activation soon", 24*time.Hour - 10*time.Second, 0, 10 * time.Second},
		{"activation due", time.Minute, 0, 0},
		{"backoff", 0, 1, time.Second},
		{"backoff grows", 0, 4, 8 * time.Second},
		{"backoff capped", 0, 20, 30 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk.Advance(tt.advance)
			if got := m.wait(tt.failures); got != tt.want {
				t.Fatalf("wait = %v, want %v", got, tt.want)
			}
		})
	}
}

func BenchmarkCurrent(b *testing.B) {
	m := newTestManager(b, testConfig(b, newFakeStore(), newFakeClock()))
	b.ReportAllocs()
	var k *Key
	for b.Loop() {
		k = m.Current()
	}
	_ = k
}

func BenchmarkPublicKey(b *testing.B) {
	m := newTestManager(b, testConfig(b, newFakeStore(), newFakeClock()))
	kid := m.Current().ID
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := m.PublicKey(kid); !ok {
			b.Fatal("missing")
		}
	}
}

func BenchmarkPublicKeyParallel(b *testing.B) {
	m := newTestManager(b, testConfig(b, newFakeStore(), newFakeClock()))
	kid := m.Current().ID
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, ok := m.PublicKey(kid); !ok {
				b.Fatal("missing")
			}
		}
	})
}

func BenchmarkJWKS(b *testing.B) {
	m := newTestManager(b, testConfig(b, newFakeStore(), newFakeClock()))
	b.ReportAllocs()
	for b.Loop() {
		_ = m.JWKS()
	}
}

func BenchmarkRefresh(b *testing.B) {
	m := newTestManager(b, testConfig(b, newFakeStore(), newFakeClock()))
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if err := m.Refresh(ctx); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRevokeNotUndoneByStaleReplica: a replica whose tick read the keys
// before another replica revoked them (rotate --revoke-old) must not write
// the revoked key back while recording its retirement.
func TestRevokeNotUndoneByStaleReplica(t *testing.T) {
	ctx := context.Background()
	st := newFakeStore()
	kek := newTestKEK(t)
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	clk := func() time.Time { return now }
	m1, err := NewManager(ctx, Config{Store: st, KEK: kek, Now: clk})
	if err != nil {
		t.Fatal(err)
	}
	m2, err := NewManager(ctx, Config{Store: st, KEK: kek, Now: clk})
	if err != nil {
		t.Fatal(err)
	}
	old := m1.Current().ID
	now = now.Add(25 * time.Hour) // the next key activates; old retires, its retirement not yet stored
	st.mu.Lock()
	snap := st.snapshotLocked()
	st.mu.Unlock()
	if err := m1.Rotate(ctx, true); err != nil {
		t.Fatal(err)
	}
	if _, ok := m1.PublicKey(old); ok {
		t.Fatal("the revoked key is still published on the replica that revoked it")
	}
	st.mu.Lock()
	st.stale = [][]store.SigningKey{snap} // m2 read before the revocation
	st.mu.Unlock()
	_ = m2.tick(ctx)
	if err := m1.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if _, ok := st.get(old); ok {
		t.Errorf("the revoked key %s is back in the store", old)
	}
	if _, ok := m1.PublicKey(old); ok {
		t.Errorf("the revoked key %s is published again", old)
	}
}

// A key is published only if its sealed half opens under the KEK and
// matches it: write access to the store alone cannot add a key that every
// verifier would trust.
func TestUnsealableKeyNotPublished(t *testing.T) {
	st, clk := newFakeStore(), newFakeClock()
	m := newTestManager(t, testConfig(t, st, clk))
	atk, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	kid, _ := thumbprint(atk.Public())
	der, _ := x509.MarshalPKIXPublicKey(atk.Public())
	now := clk.Now()
	st.set(store.SigningKey{ID: kid, Algorithm: "ES256", Public: der, Sealed: []byte("garbage"), KEKID: m.kek.ID(),
		CreatedAt: now.Add(-time.Hour), ActivateAt: now.Add(-time.Hour), RetireAt: now.Add(-time.Minute), ExpireAt: now.Add(23 * time.Hour)})
	if err := m.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.PublicKey(kid); ok {
		t.Errorf("a key whose sealed half does not open is published: %v", kids(m))
	}
}

// --revoke-old (a suspected compromise) signs with a freshly generated key,
// not the next key every replica already held, and revokes that one too.
func TestRevokeOldSignsWithAFreshKey(t *testing.T) {
	st, clk := newFakeStore(), newFakeClock()
	m := newTestManager(t, testConfig(t, st, clk))
	ks := m.KeySet().Keys
	oldCur, oldNext := ks[0].KeyID, ks[1].KeyID
	if err := m.Rotate(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	if cur := m.Current().ID; cur == oldCur || cur == oldNext {
		t.Errorf("signing with %s after --revoke-old (old current %s, old next %s)", cur, oldCur, oldNext)
	}
	for _, kid := range []string{oldCur, oldNext} {
		if _, ok := m.PublicKey(kid); ok {
			t.Errorf("%s still published after --revoke-old", kid)
		}
	}
}
