package store_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"postern.dev/postern/internal/store"
)

// A jwt-bearer assertion's jti is accepted once: the second use is a replay.
func ExampleOpen() {
	ctx := context.Background()
	// In production: "sqlite:///var/lib/postern/postern.db" or "postgres://...".
	s, err := store.Open(ctx, "sqlite::memory:")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer s.Close()

	exp := time.Now().Add(5 * time.Minute)
	fmt.Println(s.UseJTI(ctx, "https://client.example", "4f1c", exp))
	err = s.UseJTI(ctx, "https://client.example", "4f1c", exp)
	fmt.Println(errors.Is(err, store.ErrReplay))
	// Output:
	// <nil>
	// true
}
