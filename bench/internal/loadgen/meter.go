//go:build linux

package loadgen

import (
	"fmt"
	"time"
)

// Group is a named set of processes whose CPU time is measured together.
type Group struct {
	Name string
	PIDs []int
}

// Meter measures a phase's wall time and the CPU time of process groups, of
// the load generator itself and of the whole machine.
type Meter struct {
	groups  []Group
	start   time.Time
	cpu     []time.Duration
	client  time.Duration
	machine time.Duration
}

// Usage is what a Meter measured.
type Usage struct {
	// Elapsed is the wall time.
	Elapsed time.Duration
	// Groups is each group's CPU time, in the order given to StartMeter.
	Groups []time.Duration
	// Client is the CPU time the load generator (this process) used.
	Client time.Duration
	// Machine is the busy CPU time of all the machine's CPUs.
	Machine time.Duration
}

// StartMeter reads the groups' CPU times, the machine's and this
// process's, and starts the clock. A process that is gone is an error.
func StartMeter(groups []Group) (*Meter, error) {
	m := &Meter{groups: groups}
	for _, g := range groups {
		d, err := GroupCPU(g.PIDs)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", g.Name, err)
		}
		m.cpu = append(m.cpu, d)
	}
	busy, err := MachineBusy()
	if err != nil {
		return nil, err
	}
	m.machine, m.client, m.start = busy, SelfCPU(), time.Now()
	return m, nil
}

// Start returns when the measurement started.
func (m *Meter) Start() time.Time { return m.start }

// Stop closes the measurement.
func (m *Meter) Stop() (Usage, error) {
	u := Usage{Elapsed: time.Since(m.start)}
	u.Client = SelfCPU() - m.client
	for i, g := range m.groups {
		d, err := GroupCPU(g.PIDs)
		if err != nil {
			return Usage{}, fmt.Errorf("%s: %w", g.Name, err)
		}
		u.Groups = append(u.Groups, d-m.cpu[i])
	}
	busy, err := MachineBusy()
	if err != nil {
		return Usage{}, err
	}
	u.Machine = busy - m.machine
	return u, nil
}

// OtherCores returns the cores the rest of the machine kept busy meanwhile:
// all CPUs' busy time less every measured group's and the load
// generator's, per elapsed second, at least 0. It is other work that
// competed with the benchmark.
func (u Usage) OtherCores() float64 {
	measured := u.Client.Seconds()
	for _, d := range u.Groups {
		measured += d.Seconds()
	}
	return max(0, (u.Machine.Seconds()-measured)/u.Elapsed.Seconds())
}
