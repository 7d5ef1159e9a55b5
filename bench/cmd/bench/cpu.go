package main

import (
	"context"
	"os"
	"strconv"
	"strings"
	"time"
)

// The bench shares its machine. To tell a slow case from a busy machine,
// each wrk run records how much CPU went to processes other than this one
// and its children (Caddy, HAProxy, wrk): the machine's busy time from
// /proc/stat minus ours from /proc/<pid>/stat, in clock ticks.

// clockTick is the unit of /proc's CPU times (USER_HZ, 100 on Linux).
const clockTick = 10 * time.Millisecond

// cpuMeter measures the CPU time of everything but the bench's processes.
type cpuMeter struct {
	pids []int // Caddy and HAProxy; this process and its reaped children count too
}

// cpuSnap is a reading of a cpuMeter.
type cpuSnap struct {
	busy, total, ours uint64
}

func (m *cpuMeter) snap() cpuSnap {
	var s cpuSnap
	s.busy, s.total = machineTicks()
	s.ours = procTicks("self")
	for _, p := range m.pids {
		s.ours += procTicks(strconv.Itoa(p))
	}
	return s
}

// foreign returns the share of the machine's capacity (all CPUs, in
// percent) that other processes used between a and b; -1 if unknown.
func foreign(a, b cpuSnap) float64 {
	if b.total <= a.total {
		return -1
	}
	busy, ours := float64(b.busy-a.busy), float64(b.ours-a.ours)
	return max(0, busy-ours) / float64(b.total-a.total) * 100
}

// machineTicks returns the busy and total ticks of all CPUs.
func machineTicks() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq steal ...
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0
	}
	var v [8]uint64
	for i := range v {
		v[i], _ = strconv.ParseUint(f[i+1], 10, 64)
	}
	busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
	return busy, busy + v[3] + v[4]
}

// procTicks returns a process's user and system ticks, with those of its
// reaped children (wrk, once waited for).
func procTicks(pid string) uint64 {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0
	}
	// The command name may hold spaces; fields resume after its ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 15 {
		return 0
	}
	var t uint64
	for _, i := range []int{11, 12, 13, 14} { // utime stime cutime cstime
		v, _ := strconv.ParseUint(f[i], 10, 64)
		t += v
	}
	return t
}

// waitQuiet waits, up to limit, for a second in which other processes use
// at most maxOther percent of the machine, and returns their last reading.
// Waiting costs the other processes nothing, unlike a measurement that
// competes with them and has to be repeated.
func (m *cpuMeter) waitQuiet(ctx context.Context, maxOther float64, limit time.Duration) float64 {
	deadline := time.Now().Add(limit)
	for {
		a := m.snap()
		select {
		case <-ctx.Done():
			return -1
		case <-time.After(time.Second):
		}
		f := foreign(a, m.snap())
		if f <= maxOther || time.Now().After(deadline) {
			return f
		}
	}
}
