//go:build linux

package loadgen

import (
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"
)

// A real /proc/<pid>/stat line, with a command name holding a space and a
// parenthesis.
const statLine = "4242 (my (odd) cmd) S 1 4242 4242 0 -1 4194560 1075 0 0 0 250 37 0 0 20 0 3 0 12345 12345678 1234 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"

func TestParseStat(t *testing.T) {
	for _, tc := range []struct {
		name      string
		in        string
		ok        bool
		state     string
		ppid      string
		cpu       int64
		cpuErrMsg string
	}{
		{"real line", statLine, true, "S", "1", 287, ""},
		{"no parenthesis", "4242 cmd S 1 2 3 4 5 6 7 8 9 10 11 12 13", false, "", "", 0, ""},
		{"too short", "4242 (cmd) S 1 2 3", false, "", "", 0, ""},
		{"not a number", "1 (x) R 0 0 0 0 0 0 0 0 0 0 u s", true, "R", "0", 0, `strconv.ParseInt: parsing "u": invalid syntax`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f, ok := parseStat([]byte(tc.in))
			if ok != tc.ok {
				t.Fatalf("ok = %v, want %v", ok, tc.ok)
			}
			if !ok {
				return
			}
			if f[0] != tc.state || f[1] != tc.ppid {
				t.Errorf("state %q ppid %q, want %q %q", f[0], f[1], tc.state, tc.ppid)
			}
			ticks, err := statCPU(f)
			if tc.cpuErrMsg != "" {
				if err == nil || err.Error() != tc.cpuErrMsg {
					t.Fatalf("err = %v, want %q", err, tc.cpuErrMsg)
				}
				return
			}
			if err != nil || ticks != tc.cpu {
				t.Errorf("statCPU = %d, %v; want %d", ticks, err, tc.cpu)
			}
			if d := ticksToDuration(ticks); d != time.Duration(tc.cpu)*10*time.Millisecond {
				t.Errorf("ticksToDuration = %s", d)
			}
		})
	}
}

func TestBusyTicks(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     int64
		wantErr  string
	}{
		// user nice system idle iowait irq softirq steal guest guest_nice
		{"full line", "cpu  100 2 30 5000 40 5 6 7 80 9", 150, ""},
		{"older kernel", "cpu 1 2 3 4 5", 6, ""},
		{"not the cpu line", "cpu0 1 2 3 4 5 6 7", 0, "unexpected /proc/stat"},
		{"too short", "cpu 1 2 3", 0, "unexpected /proc/stat"},
		{"not a number", "cpu 1 x 3 4 5 6", 0, `/proc/stat: strconv.ParseInt: parsing "x": invalid syntax`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := busyTicks(tc.in)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("busyTicks = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}

func TestParseStatus(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     Memory
		wantErr  string
	}{
		{"real", "Name:\tbench\nVmPeak:\t  9000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\nThreads:\t5\n", Memory{RSS: 1 << 20, HWM: 2 << 20}, ""},
		{"kernel thread", "Name:\tkthreadd\nState:\tS (sleeping)\n", Memory{}, ""},
		{"bad unit", "VmRSS:\t1024 MB\n", Memory{}, `VmRSS: "\t1024 MB"`},
		{"bad number", "VmHWM:\tlots kB\n", Memory{}, `VmHWM: "\tlots kB"`},
		{"negative", "VmRSS:\t-1 kB\n", Memory{}, `VmRSS: "\t-1 kB"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseStatus(strings.NewReader(tc.in))
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("parseStatus = %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
}

func TestProcSelf(t *testing.T) {
	start := time.Now()
	for time.Since(start) < 50*time.Millisecond { // burn some CPU
	}
	d, err := GroupCPU([]int{os.Getpid()})
	if err != nil || d <= 0 || d > time.Hour {
		t.Errorf("GroupCPU = %s, %v", d, err)
	}
	if _, err := ProcCPU(-1); err == nil {
		t.Error("no error for a missing process")
	}
	if _, err := GroupCPU([]int{os.Getpid(), -1}); err == nil {
		t.Error("no error for a group with a missing process")
	}
	m, err := ProcMemory([]int{os.Getpid(), os.Getpid()})
	if err != nil || m.RSS <= 0 || m.HWM < m.RSS {
		t.Errorf("ProcMemory = %+v, %v", m, err)
	}
	one, _ := ProcMemory([]int{os.Getpid()})
	if m.HWM < 2*one.HWM-(1<<20) {
		t.Errorf("ProcMemory does not sum: %+v vs one %+v", m, one)
	}
	if busy, err := MachineBusy(); err != nil || busy < d {
		t.Errorf("MachineBusy = %s, %v; want at least this process's %s", busy, err, d)
	}
	if SelfCPU() <= 0 {
		t.Error("SelfCPU is not positive")
	}
	if CPUModel() == "" {
		t.Error("empty CPUModel")
	}
	cmd := exec.Command("sleep", "5")
	if err := cmd.Start(); err != nil {
		t.Skip("no sleep:", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if got := ChildPIDs(os.Getpid()); !slices.Contains(got, cmd.Process.Pid) {
		t.Errorf("ChildPIDs = %v, want %d among them", got, cmd.Process.Pid)
	}
}

func TestMeter(t *testing.T) {
	m, err := StartMeter([]Group{{Name: "self", PIDs: []int{os.Getpid()}}})
	if err != nil {
		t.Fatal(err)
	}
	for time.Since(m.Start()) < 30*time.Millisecond {
	}
	u, err := m.Stop()
	if err != nil {
		t.Fatal(err)
	}
	if u.Elapsed < 30*time.Millisecond || len(u.Groups) != 1 || u.Client <= 0 || u.OtherCores() < 0 {
		t.Errorf("usage %+v, other cores %v", u, u.OtherCores())
	}
	if _, err := StartMeter([]Group{{Name: "gone", PIDs: []int{-1}}}); err == nil || !strings.HasPrefix(err.Error(), "gone: process CPU: ") {
		t.Errorf("err = %v, want the group's name first", err)
	}
}

func TestUsageOtherCores(t *testing.T) {
	for _, tc := range []struct {
		name string
		u    Usage
		want float64
	}{
		{"others busy", Usage{Elapsed: 2 * time.Second, Groups: []time.Duration{time.Second}, Client: time.Second, Machine: 4 * time.Second}, 1},
		{"clamped at 0", Usage{Elapsed: time.Second, Groups: []time.Duration{time.Second}, Client: time.Second, Machine: time.Second}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.u.OtherCores(); got != tc.want {
				t.Errorf("OtherCores = %v, want %v", got, tc.want)
			}
		})
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte(statLine))
	f.Add([]byte("1 (a) b)"))
	f.Add([]byte(")"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if fields, ok := parseStat(b); ok {
			if len(fields) < 13 {
				t.Fatalf("%d fields", len(fields))
			}
			_, _ = statCPU(fields)
		}
	})
}

func FuzzBusyTicks(f *testing.F) {
	f.Add("cpu  100 2 30 5000 40 5 6 7 80 9")
	f.Add("cpu 1 2 3 4 5")
	f.Fuzz(func(t *testing.T, s string) {
		_, _ = busyTicks(s)
	})
}

func FuzzParseStatus(f *testing.F) {
	f.Add("Name:\tbench\nVmHWM:\t    2048 kB\nVmRSS:\t    1024 kB\n")
	f.Add("VmRSS:1 kB")
	f.Fuzz(func(t *testing.T, s string) {
		if m, err := parseStatus(strings.NewReader(s)); err == nil && (m.RSS < 0 || m.HWM < 0) {
			t.Fatalf("negative memory %+v", m)
		}
	})
}
