package store

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkUseJTI measures recording a fresh (issuer, jti) pair, one caller
// at a time and from GOMAXPROCS callers at once, and detecting a replay.
func BenchmarkUseJTI(b *testing.B) {
	b.Run("sqlite-file", func(b *testing.B) { benchUseJTI(b, openSQLiteFile(b)) })
	b.Run("sqlite-memory", func(b *testing.B) {
		s, err := OpenSQLite(context.Background(), ":memory:")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = s.Close() })
		benchUseJTI(b, s)
	})
	b.Run("postgres", func(b *testing.B) { benchUseJTI(b, openPG(b, newPGSchema(b))) })
}

func benchUseJTI(b *testing.B, s Store) {
	ctx := context.Background()
	exp := time.Now().Add(time.Hour)
	var n atomic.Int64 // unique jtis across sub-benchmarks and their runs
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			if err := s.UseJTI(ctx, "https://issuer.example", strconv.FormatInt(n.Add(1), 10), exp); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := s.UseJTI(ctx, "https://issuer.example", strconv.FormatInt(n.Add(1), 10), exp); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("replay", func(b *testing.B) {
		if err := s.UseJTI(ctx, "https://issuer.example", "replayed", exp); err != nil && !errors.Is(err, ErrReplay) {
			b.Fatal(err)
		}
		for b.Loop() {
			if err := s.UseJTI(ctx, "https://issuer.example", "replayed", exp); !errors.Is(err, ErrReplay) {
				b.Fatal(err)
			}
		}
	})
}
