package agent

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

const memChildEnv = "POSTERN_AGENT_MEMORY_CHILD"

// roundRobin attests the n-th connection as uid:<n mod size>.
type roundRobin struct {
	n    atomic.Int64
	size int64
}

func (r *roundRobin) Attest(*net.UnixConn) ([]Selector, error) {
	i := r.n.Add(1) - 1
	return []Selector{unix("uid:" + strconv.FormatInt(i%r.size, 10))}, nil
}

// TestMemoryChild is the agent process of BenchmarkAgentMemory100Workloads;
// it only runs when that benchmark starts it.
func TestMemoryChild(t *testing.T) {
	sock := os.Getenv(memChildEnv)
	if sock == "" {
		t.Skip("run by BenchmarkAgentMemory100Workloads")
	}
	var entries []Entry
	for i := range 100 {
		entries = append(entries, Entry{
			SPIFFEID:  fmt.Sprintf("spiffe://example.org/ns/bench/sa/w%d", i),
			Selectors: []Selector{unix("uid:" + strconv.Itoa(i))},
			TTL:       time.Hour,
		})
	}
	fs := newFakeServer(t, newClock(), entries...)
	startAgent(t, fs, nil, func(c *Config) {
		c.SocketPath = sock
		c.PeerAttestor = &roundRobin{size: 100}
		c.Now = nil
		c.PollInterval = 0
	})
	fmt.Println("READY")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() != "STATS" {
			return
		}
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		fmt.Printf("STATS heap_inuse=%d heap_alloc=%d sys=%d goroutines=%d rss_kb=%d\n",
			m.HeapInuse, m.HeapAlloc, m.Sys, runtime.NumGoroutine(), rssKB())
	}
}

func rssKB() int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			n, _ := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(l, "VmRSS:"), "kB")))
			return n
		}
	}
	return -1
}

type x509Watcher struct {
	once sync.Once
	got  chan struct{}
}

func (w *x509Watcher) OnX509ContextUpdate(*workloadapi.X509Context) {
	w.once.Do(func() { close(w.got) })
}
func (w *x509Watcher) OnX509ContextWatchError(error) {}

// BenchmarkAgentMemory100Workloads measures the agent process (started as a
// child, so the clients' memory is not counted) idle with 100 Workload
// entries, then with 100 workloads attached, each watching its X.509-SVID.
// Run it once:
//
//	go test -run '^$' -bench AgentMemory -benchtime 1x ./internal/agent
func BenchmarkAgentMemory100Workloads(b *testing.B) {
	dir := socketDir(b)
	sock := filepath.Join(dir, "agent.sock")
	cmd := exec.Command(os.Args[0], "-test.run", "^TestMemoryChild$", "-test.v")
	cmd.Env = append(os.Environ(), memChildEnv+"="+sock)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	out := bufio.NewScanner(stdout)
	waitFor := func(prefix string) string {
		for out.Scan() {
			if strings.HasPrefix(out.Text(), prefix) {
				return out.Text()
			}
		}
		b.Fatalf("child ended before %s", prefix)
		return ""
	}
	waitFor("READY")
	stats := func() map[string]float64 {
		fmt.Fprintln(stdin, "STATS")
		line := waitFor("STATS")
		m := map[string]float64{}
		for _, f := range strings.Fields(line)[1:] {
			k, v, _ := strings.Cut(f, "=")
			n, _ := strconv.ParseFloat(v, 64)
			m[k] = n
		}
		return m
	}
	idle := stats()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	for range 100 {
		c, err := workloadapi.New(ctx, workloadapi.WithAddr("unix://"+sock))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		w := &x509Watcher{got: make(chan struct{})}
		wg.Add(1)
		go func() { defer wg.Done(); c.WatchX509Context(ctx, w) }()
		select {
		case <-w.got:
		case <-time.After(20 * time.Second):
			b.Fatal("a workload got no SVID")
		}
	}
	attached := stats()
	b.ReportMetric(idle["heap_inuse"], "idle-heap-B")
	b.ReportMetric(attached["heap_inuse"], "attached-heap-B")
	b.ReportMetric((attached["heap_inuse"]-idle["heap_inuse"])/100, "heap-B/workload")
	b.ReportMetric(attached["rss_kb"]*1024, "attached-rss-B")
	b.ReportMetric(attached["goroutines"], "goroutines")
	b.Logf("idle: %v", idle)
	b.Logf("100 attached: %v", attached)
	cancel()
	wg.Wait()
}
