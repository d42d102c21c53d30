//go:build linux

package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat.
// It is 100 on every mainstream Linux build (what `getconf CLK_TCK`
// prints); the benchmark assumes it rather than calling into libc.
const clockTicks = 100

// statFields returns the fields of /proc/<pid>/stat after the command name
// (field 3, the state, comes first).
func statFields(pid int) ([]string, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	// The command name (field 2) is in parentheses and may hold spaces.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return nil, fmt.Errorf("unexpected /proc/%d/stat", pid)
	}
	return f, nil
}

// procCPU returns the CPU time (user + system) process pid has used, from
// /proc/<pid>/stat, with a resolution of 1/clockTicks second.
func procCPU(pid int) (time.Duration, error) {
	f, err := statFields(pid)
	if err != nil {
		return 0, fmt.Errorf("process CPU: %w", err)
	}
	var ticks int64
	for _, s := range f[11:13] { // fields 14 (utime) and 15 (stime)
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("process CPU: /proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// groupCPU sums procCPU over pids; a process that is gone is an error (an
// nginx worker that crashed must not go unnoticed).
func groupCPU(pids []int) (time.Duration, error) {
	var total time.Duration
	for _, pid := range pids {
		d, err := procCPU(pid)
		if err != nil {
			return 0, err
		}
		total += d
	}
	return total, nil
}

// memory is a process group's resident set, in bytes.
type memory struct {
	// RSS is VmRSS now.
	RSS int64 `json:"rss"`
	// HWM is VmHWM, the peak resident set since the process started.
	HWM int64 `json:"hwm"`
}

// procMemory sums VmRSS and VmHWM of /proc/<pid>/status over pids.
func procMemory(pids []int) (memory, error) {
	var m memory
	for _, pid := range pids {
		f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/status")
		if err != nil {
			return memory{}, fmt.Errorf("process memory: %w", err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, ok := strings.Cut(sc.Text(), ":")
			if !ok || (k != "VmRSS" && k != "VmHWM") {
				continue
			}
			kb, unit, _ := strings.Cut(strings.TrimSpace(v), " ")
			n, err := strconv.ParseInt(kb, 10, 64)
			if err != nil || unit != "kB" {
				f.Close()
				return memory{}, fmt.Errorf("process memory: /proc/%d/status: %s: %q", pid, k, v)
			}
			if k == "VmRSS" {
				m.RSS += n << 10
			} else {
				m.HWM += n << 10
			}
		}
		err = sc.Err()
		f.Close()
		if err != nil {
			return memory{}, fmt.Errorf("process memory: %w", err)
		}
	}
	return m, nil
}

// childPIDs returns the processes whose parent is ppid, by scanning
// /proc/<n>/stat (field 4). It reads at most 1<<16 entries.
func childPIDs(ppid int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	var pids []int
	for i, e := range entries {
		if i >= 1<<16 {
			break
		}
		pid, err := strconv.Atoi(e.Name())
		if err != nil || !e.IsDir() {
			continue
		}
		f, err := statFields(pid)
		if err != nil || len(f) < 2 {
			continue
		}
		if p, err := strconv.Atoi(f[1]); err == nil && p == ppid {
			pids = append(pids, pid)
		}
	}
	return pids
}

// machineBusy returns the CPU time all CPUs of the machine have spent not
// idle (the first line of /proc/stat minus idle and iowait).
func machineBusy() (time.Duration, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, fmt.Errorf("machine CPU: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, errors.New("machine CPU: empty /proc/stat")
	}
	fields := strings.Fields(sc.Text())
	if len(fields) < 6 || fields[0] != "cpu" {
		return 0, errors.New("machine CPU: unexpected /proc/stat")
	}
	var ticks int64
	for i, s := range fields[1:] {
		if i >= 8 { // guest and guest_nice are already counted in user and nice
			break
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("machine CPU: /proc/stat: %w", err)
		}
		if i != 3 && i != 4 { // idle, iowait
			ticks += n
		}
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// selfCPU returns the CPU time (user + system) this process has used.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// cpuModel returns the first "model name" of /proc/cpuinfo, or "unknown".
func cpuModel() string {
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
