//go:build linux

package loadgen

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ClockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat.
// It is 100 on every mainstream Linux build (what `getconf CLK_TCK`
// prints); the benchmarks assume it rather than calling into libc.
const ClockTicks = 100

// maxProcEntries bounds how many /proc entries ChildPIDs reads.
const maxProcEntries = 1 << 16

// StatFields returns the fields of /proc/<pid>/stat after the command name
// (field 3, the state, comes first).
func StatFields(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	f, ok := parseStat(b)
	if !ok {
		return nil, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	return f, nil
}

// parseStat splits the content of a /proc/<pid>/stat file after the
// command name, which is in parentheses and may hold spaces or
// parentheses. It reports false unless at least fields 3 to 15 are there.
func parseStat(b []byte) ([]string, bool) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, false
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return nil, false
	}
	return f, true
}

// statCPU returns utime + stime (fields 14 and 15) of the fields StatFields
// returns, in ticks.
func statCPU(f []string) (int64, error) {
	var ticks int64
	for _, s := range f[11:13] {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, err
		}
		ticks += n
	}
	return ticks, nil
}

// ProcCPU returns the CPU time (user + system) process pid has used, from
// /proc/<pid>/stat, with a resolution of 1/ClockTicks second.
func ProcCPU(pid int) (time.Duration, error) {
	f, err := StatFields(pid)
	if err != nil {
		return 0, fmt.Errorf("process CPU: %w", err)
	}
	ticks, err := statCPU(f)
	if err != nil {
		return 0, fmt.Errorf("process CPU: /proc/%d/stat: %w", pid, err)
	}
	return ticksToDuration(ticks), nil
}

// GroupCPU sums ProcCPU over pids; a process that is gone is an error (an
// nginx worker that crashed must not go unnoticed).
func GroupCPU(pids []int) (time.Duration, error) {
	var total time.Duration
	for _, pid := range pids {
		d, err := ProcCPU(pid)
		if err != nil {
			return 0, err
		}
		total += d
	}
	return total, nil
}

func ticksToDuration(ticks int64) time.Duration {
	return time.Duration(ticks) * time.Second / ClockTicks
}

// Memory is a process group's resident set, in bytes.
type Memory struct {
	// RSS is VmRSS now.
	RSS int64 `json:"rss"`
	// HWM is VmHWM, the peak resident set since the process started.
	HWM int64 `json:"hwm"`
}

// ProcMemory sums VmRSS and VmHWM of /proc/<pid>/status over pids.
func ProcMemory(pids []int) (Memory, error) {
	var m Memory
	for _, pid := range pids {
		f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			return Memory{}, fmt.Errorf("process memory: %w", err)
		}
		one, err := parseStatus(f)
		f.Close()
		if err != nil {
			return Memory{}, fmt.Errorf("process memory: /proc/%d/status: %w", pid, err)
		}
		m.RSS += one.RSS
		m.HWM += one.HWM
	}
	return m, nil
}

// parseStatus reads VmRSS and VmHWM from the content of a
// /proc/<pid>/status file; lines are bounded by bufio.Scanner's default
// 64 KiB.
func parseStatus(r io.Reader) (Memory, error) {
	var m Memory
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		kb, unit, _ := strings.Cut(strings.TrimSpace(v), " ")
		n, err := strconv.ParseInt(kb, 10, 64)
		if err != nil || unit != "kB" || n < 0 {
			return Memory{}, fmt.Errorf("%s: %q", k, v)
		}
		if k == "VmRSS" {
			m.RSS += n << 10
		} else {
			m.HWM += n << 10
		}
	}
	return m, sc.Err()
}

// ChildPIDs returns the processes whose parent is ppid, by scanning
// /proc/<n>/stat (field 4). It reads at most 1<<16 entries.
func ChildPIDs(ppid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for i, e := range entries {
		if i >= maxProcEntries {
			break
		}
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !e.IsDir() {
			continue
		}
		f, err := StatFields(pid)
		if err != nil || len(f) < 2 {
			continue
		}
		if p, err := strconv.Atoi(f[1]); err == nil && p == ppid {
			pids = append(pids, pid)
		}
	}
	return pids
}

// MachineBusy returns the CPU time all CPUs of the machine have spent not
// idle (the first line of /proc/stat minus idle and iowait).
func MachineBusy() (time.Duration, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("machine CPU: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, errors.New("machine CPU: empty /proc/stat")
	}
	ticks, err := busyTicks(sc.Text())
	if err != nil {
		return 0, fmt.Errorf("machine CPU: %w", err)
	}
	return ticksToDuration(ticks), nil
}

// busyTicks returns the busy ticks of /proc/stat's "cpu" line: user, nice,
// system, irq, softirq and steal (guest and guest_nice are already counted
// in user and nice; idle and iowait are not busy).
func busyTicks(line string) (int64, error) {
	fields := strings.Fields(line)
	if len(fields) < 6 || fields[0] != "cpu" {
		return 0, errors.New("unexpected /proc/stat")
	}
	var ticks int64
	for i, s := range fields[1:] {
		if i >= 8 {
			break
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat: %w", err)
		}
		if i != 3 && i != 4 { // idle, iowait
			ticks += n
		}
	}
	return ticks, nil
}

// SelfCPU returns the CPU time (user + system) this process has used.
func SelfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// CPUModel returns the first "model name" of /proc/cpuinfo, or "unknown".
func CPUModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}
