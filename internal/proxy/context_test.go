package proxy

import (
	"testing"
	"time"
)

func TestContextStore(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	s := NewContextStore(10, func() time.Time { return now })
	id := s.Put("tok", now.Add(time.Minute))
	if len(id) != 22 {
		t.Fatalf("id %q is not 128 bits base64url", id)
	}
	if got, ok := s.Get(id); !ok || got != "tok" {
		t.Fatalf("Get = %q %v", got, ok)
	}
	if _, ok := s.Get("unknown"); ok {
		t.Error("unknown id found")
	}
	now = now.Add(time.Minute)
	if _, ok := s.Get(id); ok {
		t.Error("expired context returned")
	}
	if s.Len() != 0 {
		t.Error("expired context kept")
	}
	for range 100 {
		s.Put("x", now.Add(time.Hour))
	}
	if n := s.Len(); n > 10 {
		t.Errorf("store holds %d contexts, bound is 10", n)
	}
	if a, b := s.Put("t", now.Add(time.Hour)), s.Put("t", now.Add(time.Hour)); a == b {
		t.Error("ids repeat")
	}
}
