package attest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"postern.dev/postern/internal/store"
)

var agentID = spiffeid.RequireFromPath(testTD, "/postern/agent/node-1")

func TestCreateJoinToken(t *testing.T) {
	ctx := context.Background()
	st := newFakeJoinStore()
	tok, err := CreateJoinToken(ctx, st, agentID, 0, t0)
	if err != nil {
		t.Fatal(err)
	}
	if len(tok) != 43 || strings.ContainsAny(tok, "+/=") {
		t.Fatalf("token %q is not 32 bytes of unpadded base64url", tok)
	}
	rec := st.only()
	sum := sha256.Sum256([]byte(tok))
	if rec.Hash != hex.EncodeToString(sum[:]) {
		t.Errorf("stored hash %q is not the hex SHA-256 of the token", rec.Hash)
	}
	if strings.Contains(rec.Hash, tok) || rec.SPIFFEID != agentID.String() {
		t.Errorf("stored record %+v", rec)
	}
	if !rec.CreatedAt.Equal(t0) || !rec.ExpiresAt.Equal(t0.Add(DefaultJoinTokenTTL)) {
		t.Errorf("times %v..%v, want %v..%v", rec.CreatedAt, rec.ExpiresAt, t0, t0.Add(DefaultJoinTokenTTL))
	}
	tok2, err := CreateJoinToken(ctx, st, agentID, time.Hour, t0)
	if err != nil || tok2 == tok {
		t.Fatalf("second token: %v (same: %v)", err, tok2 == tok)
	}
}

func TestCreateJoinTokenErrors(t *testing.T) {
	ctx := context.Background()
	storeErr := errors.New("disk full")
	tests := []struct {
		name    string
		id      spiffeid.ID
		ttl     time.Duration
		fail    error
		wantErr string
	}{
		{"zero id", spiffeid.ID{}, 0, nil, "attest: join token needs a SPIFFE ID"},
		{"ttl too short", agentID, 59 * time.Second, nil, "attest: join token ttl 59s is outside 1m0s..24h0m0s"},
		{"ttl too long", agentID, 24*time.Hour + time.Second, nil, "attest: join token ttl 24h0m1s is outside 1m0s..24h0m0s"},
		{"negative ttl", agentID, -time.Minute, nil, "attest: join token ttl -1m0s is outside 1m0s..24h0m0s"},
		{"store fails", agentID, time.Minute, storeErr, "attest: store join token: disk full"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := newFakeJoinStore()
			st.fail = tt.fail
			_, err := CreateJoinToken(ctx, st, tt.id, tt.ttl, t0)
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func TestConsumeJoinToken(t *testing.T) {
	ctx := context.Background()
	const rejected = "attest: attestation failed: join token unknown, used or expired"
	const malformed = "attest: attestation failed: join token malformed"
	tests := []struct {
		name    string
		lax     bool
		consume func(t *testing.T, st *fakeJoinStore, tok string) (spiffeid.ID, error)
		wantErr string
	}{
		{"valid", false, func(_ *testing.T, st *fakeJoinStore, tok string) (spiffeid.ID, error) {
			return ConsumeJoinToken(ctx, st, tok, t0.Add(time.Minute))
		}, ""},
		{"valid with surrounding whitespace", false, func(_ *testing.T, st *fakeJoinStore, tok string) (spiffeid.ID, error) {
			return ConsumeJoinToken(ctx, st, " "+tok+"\n", t0.Add(time.Minute))
		}, ""},
		{"replay", false, func(t *testing.T, st *fakeJoinStore, tok string) (spiffeid.ID, error) {
			if _, err := ConsumeJoinToken(ctx, st, tok, t0.Add(time.Minute)); err != nil {
				t.Fatal(err)
			}
			return ConsumeJoinToken(ctx, st, tok, t0.Add(2*time.Minute))
		}, rejected},
		{"expired", false, func(_ *testing.T, st *fakeJoinStore, tok string) (spiffeid.ID, error) {
			return ConsumeJoinToken(ctx, st, tok, t0.Add(10*time.Minute))
		}, rejected},
		{"expired with a lax store", true, func(_ *testing.T, st *fakeJoinStore, tok string) (spiffeid.ID, error) {
			return ConsumeJoinToken(ctx, st, tok, t0.Add(10*time.Minute))
		}, rejected},
		{"unknown", false, func(_ *testing.T, st *fakeJoinStore, tok string) (spiffeid.ID, error) {
			other := "A" + tok[1:]
			if other == tok {
				other = "B" + tok[1:]
			}
			return ConsumeJoinToken(ctx, st, other, t0.Add(time.Minute))
		}, rejected},
		{"empty", false, func(_ *testing.T, st *fakeJoinStore, _ string) (spiffeid.ID, error) {
			return ConsumeJoinToken(ctx, st, "", t0)
		}, malformed},
		{"truncated", false, func(_ *testing.T, st *fakeJoinStore, tok string) (spiffeid.ID, error) {
			return ConsumeJoinToken(ctx, st, tok[:42], t0)
		}, malformed},
		{"not base64url", false, func(_ *testing.T, st *fakeJoinStore, tok string) (spiffeid.ID, error) {
			return ConsumeJoinToken(ctx, st, "+"+tok[1:], t0)
		}, malformed},
		{"the hash instead of the token", false, func(_ *testing.T, st *fakeJoinStore, tok string) (spiffeid.ID, error) {
			return ConsumeJoinToken(ctx, st, hashJoinToken(tok), t0)
		}, malformed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := newFakeJoinStore()
			st.lax = tt.lax
			tok, err := CreateJoinToken(ctx, st, agentID, 10*time.Minute, t0)
			if err != nil {
				t.Fatal(err)
			}
			id, err := tt.consume(t, st, tok)
			if tt.wantErr == "" {
				if err != nil || id != agentID {
					t.Fatalf("got %v, %v; want %v", id, err, agentID)
				}
				return
			}
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("err = %v, want %q", err, tt.wantErr)
			}
			if !errors.Is(err, ErrAttestation) || !id.IsZero() {
				t.Fatalf("refusal %v does not wrap ErrAttestation or returned id %v", err, id)
			}
			if strings.Contains(err.Error(), tok) {
				t.Fatal("error contains the token")
			}
		})
	}
}

func TestConsumeJoinTokenStoreFailure(t *testing.T) {
	ctx := context.Background()
	st := newFakeJoinStore()
	tok, err := CreateJoinToken(ctx, st, agentID, 0, t0)
	if err != nil {
		t.Fatal(err)
	}
	down := errors.New("connection refused")
	st.fail = down
	_, err = ConsumeJoinToken(ctx, st, tok, t0)
	if !errors.Is(err, down) || errors.Is(err, ErrAttestation) {
		t.Fatalf("err = %v: want the store error, not a refusal", err)
	}
	if want := "attest: consume join token: connection refused"; err.Error() != want {
		t.Fatalf("err = %q, want %q", err, want)
	}
}

func TestConsumeJoinTokenInvalidStoredID(t *testing.T) {
	ctx := context.Background()
	st := newFakeJoinStore()
	tok, err := CreateJoinToken(ctx, st, agentID, 0, t0)
	if err != nil {
		t.Fatal(err)
	}
	rec := st.only()
	rec.SPIFFEID = "https://example.org/x"
	st.tokens[rec.Hash] = rec
	_, err = ConsumeJoinToken(ctx, st, tok, t0)
	if !errors.Is(err, ErrAttestation) || !strings.HasPrefix(err.Error(), "attest: attestation failed: join token names an invalid SPIFFE ID") {
		t.Fatalf("err = %v", err)
	}
}

func TestConsumeJoinTokenConcurrent(t *testing.T) {
	ctx := context.Background()
	st := newFakeJoinStore()
	tok, err := CreateJoinToken(ctx, st, agentID, 0, t0)
	if err != nil {
		t.Fatal(err)
	}
	var wins, refusals atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range 50 {
		wg.Go(func() {
			<-start
			id, err := ConsumeJoinToken(ctx, st, tok, t0.Add(time.Second))
			switch {
			case err == nil && id == agentID:
				wins.Add(1)
			case errors.Is(err, ErrAttestation) && errors.Is(err, errJoinTokenRejected):
				refusals.Add(1)
			default:
				t.Errorf("unexpected result %v, %v", id, err)
			}
		})
	}
	close(start)
	wg.Wait()
	if wins.Load() != 1 || refusals.Load() != 49 {
		t.Fatalf("wins %d, refusals %d; want 1 and 49", wins.Load(), refusals.Load())
	}
	if st.only().UsedAt.IsZero() {
		t.Fatal("token not marked used")
	}
}

var _ JoinTokenStore = store.Store(nil)
