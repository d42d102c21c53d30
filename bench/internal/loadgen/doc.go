//go:build linux

// Package loadgen holds what the benchmark load generators under bench/
// (bench/sts, bench/sidecar) share: re-executing the program as a child
// process that announces itself with one JSON line and dies with its
// parent, reading CPU time and memory from /proc, the closed-loop and
// open-loop load phases, latency samples and their percentiles, and small
// pieces of the reports.
//
// It is Linux-only (it reads /proc) and meant for benchmarks only: it binds
// nothing itself, and every loop it runs is bounded in time and in count.
package loadgen
