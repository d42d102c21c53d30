//go:build linux

package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"postern.dev/postern/bench/internal/loadgen"
)

// rawES256 measures the machine's raw ES256 rate on one core: each op is
// one ECDSA P-256 verify and one sign over a SHA-256 digest (what a token
// exchange cannot avoid: verify the subject token, sign the new one), in a
// single goroutine for about d.
func rawES256(ctx context.Context, d time.Duration) (rawResult, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return rawResult{}, fmt.Errorf("raw ES256: %w", err)
	}
	digest := sha256.Sum256([]byte("postern raw ES256 verify+sign"))
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		return rawResult{}, fmt.Errorf("raw ES256: %w", err)
	}
	const maxOps = 10_000_000
	start, cpu0 := time.Now(), loadgen.SelfCPU()
	deadline := start.Add(d)
	var ops int
	for ops < maxOps && time.Now().Before(deadline) && ctx.Err() == nil {
		if !ecdsa.VerifyASN1(&key.PublicKey, digest[:], sig) {
			return rawResult{}, errors.New("raw ES256: verify failed")
		}
		if _, err := ecdsa.SignASN1(rand.Reader, key, digest[:]); err != nil {
			return rawResult{}, fmt.Errorf("raw ES256: %w", err)
		}
		ops++
	}
	if err := ctx.Err(); err != nil {
		return rawResult{}, err
	}
	wall, cpu := time.Since(start), loadgen.SelfCPU()-cpu0
	r := rawResult{Ops: ops, PerSecond: float64(ops) / wall.Seconds()}
	r.PerCPUSecond = r.PerSecond
	if cpu > 0 {
		r.PerCPUSecond = float64(ops) / cpu.Seconds()
	}
	return r, nil
}

// rawResult is one raw ES256 measurement.
type rawResult struct {
	// Ops is the number of verify+sign pairs done.
	Ops int `json:"ops"`
	// PerSecond is ops per wall-clock second (one goroutine: one core).
	PerSecond float64 `json:"perSecond"`
	// PerCPUSecond is ops per CPU-second this process used meanwhile,
	// which other load on the machine does not lower.
	PerCPUSecond float64 `json:"perCPUSecond"`
}
