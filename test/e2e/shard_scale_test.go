package e2e

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/microscaling/microscaling/informer"
	"github.com/microscaling/microscaling/test/harness"
)

// TestShardedScaleBenchmark is the sharded run of BENCHMARKS.md's scale
// section, not a pass/fail check (MICROSCALING_BENCH=1): the scale
// benchmark's Deployments (MICROSCALING_SHARD_SIZE, 30,000 by default, in
// groups of five) over 30 namespaces, decided by three shards, each a
// controller with its own Lease, and a standby of shard 0. It prints per
// shard its members, CPU a tick, RSS and tick lag; checks that every
// Deployment is decided by exactly the shard that owns its namespace; then
// kills shard 0's leader and measures how long until its standby leads and
// decides all of shard 0's Deployments.
func TestShardedScaleBenchmark(t *testing.T) {
	if os.Getenv("MICROSCALING_BENCH") == "" {
		t.Skip("benchmark: set MICROSCALING_BENCH=1")
	}
	n := 30000
	if v := os.Getenv("MICROSCALING_SHARD_SIZE"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 5 {
			t.Fatalf("MICROSCALING_SHARD_SIZE=%q: want a whole number of at least 5", v)
		}
	}
	const count, spaces = 3, 30
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: []harness.Node{{Name: "n1", CPU: "64", Memory: "256Gi", Pods: 1000}}})
	ensureRemainderClass(t, s)
	namespaces := make([]string, spaces)
	owner := map[string]int{}
	for i := range namespaces {
		namespaces[i] = fmt.Sprintf("bench-%d", i)
		for sh := range count {
			if (informer.Shard{Index: sh, Count: count}).Owns(namespaces[i]) {
				owner[namespaces[i]] = sh
			}
		}
		if _, err := s.Kubectl(t.Context(), "create", "namespace", namespaces[i]); err != nil {
			t.Fatal(err)
		}
	}
	groups := n / 5
	for g := range groups {
		ensureChannel(t, s, "t"+strconv.Itoa(g), "c")
	}
	benchDeployments(t, s, n, namespaces, func(g int) string { return fmt.Sprintf("nsq://%s/t%d/c", s.NSQ.HTTPAddr, g) })
	// What each shard must decide: the members of its namespaces.
	want := make([][]string, count)
	for g := range groups {
		ns := namespaces[g%spaces]
		for _, m := range []string{"q1", "q2", "q3", "q4", "rem"} {
			want[owner[ns]] = append(want[owner[ns]], fmt.Sprintf("%s/g%d-%s", ns, g, m))
		}
	}
	for sh := range want {
		slices.Sort(want[sh])
	}

	args := append([]string{"--leader-elect", "--leader-elect-lease-namespace=default"}, strings.Fields(os.Getenv("MICROSCALING_CONTROLLER_ARGS"))...)
	shards := make([]*controller, count)
	for sh := range count {
		shards[sh] = startController(t, s.Kubeconfig, append(args, fmt.Sprintf("--shard=%d/%d", sh, count), fmt.Sprintf("--leader-elect-identity=shard-%d-a", sh))...)
		waitLeader(t, shards[sh], 1, time.Minute)
	}
	standby := startController(t, s.Kubeconfig, append(args, fmt.Sprintf("--shard=0/%d", count), "--leader-elect-identity=shard-0-b")...)
	waitLeader(t, standby, 0, time.Minute)
	for sh, c := range shards {
		eventually(t, 5*time.Minute, func(ctx context.Context) error {
			got, err := decided(ctx, c)
			if err != nil {
				return err
			}
			if !slices.Equal(got, want[sh]) {
				return fmt.Errorf("shard %d decides %d Deployments, want the %d of its namespaces", sh, len(got), len(want[sh]))
			}
			return nil
		})
	}
	settle(t, n, shards...)

	pids := make([]int, count)
	m0, cpu0 := make([]map[string]float64, count), make([]float64, count)
	for sh, c := range shards {
		pids[sh] = c.cmd.Process.Pid
		m0[sh], cpu0[sh] = scrape(t, c), procCPU(t, pids[sh])
	}
	rss := sampleRSS(t, benchWindow(t, 60*time.Second), pids...)
	for sh, c := range shards {
		cpu1, m1 := procCPU(t, pids[sh]), scrape(t, c)
		ticks := m1["microscaling_tick_duration_seconds_count"] - m0[sh]["microscaling_tick_duration_seconds_count"]
		writes := 0.0
		for k := range m1 {
			if strings.HasPrefix(k, "microscaling_api_requests_total") && !strings.Contains(k, `verb="GET"`) &&
				!strings.Contains(k, `resource="events"`) && !strings.Contains(k, `resource="leases"`) {
				writes += m1[k] - m0[sh][k]
			}
		}
		line := fmt.Sprintf("SHARD %d/%d deployments=%d of=%d rss-mib=%.0f (max %.0f) cpu-ms-per-tick=%.1f lag-p50-ms=%.0f lag-p99-ms=%.0f api-writes-per-tick=%.2f ticks=%.0f",
			sh, count, len(want[sh]), n, rss[sh].median/(1<<20), rss[sh].max/(1<<20), 1000*(cpu1-cpu0[sh])/ticks,
			1000*histQuantile(m0[sh], m1, "microscaling_tick_lag_seconds_bucket{", 0.5), 1000*histQuantile(m0[sh], m1, "microscaling_tick_lag_seconds_bucket{", 0.99),
			writes/ticks, ticks)
		t.Log(line)
		fmt.Println(line)
	}
	if got, err := decided(t.Context(), standby); err != nil || len(got) != 0 {
		t.Errorf("the standby decides %d Deployments (%v), want none", len(got), err)
	}

	// Shard 0's leader dies: its standby leads, then decides all of shard
	// 0's Deployments (its caches are warm: it watched while it waited).
	shards[0].kill()
	killed := time.Now()
	waitLeader(t, standby, 1, time.Minute)
	leads := time.Since(killed)
	eventually(t, 5*time.Minute, func(ctx context.Context) error {
		got, err := decided(ctx, standby)
		if err != nil {
			return err
		}
		if !slices.Equal(got, want[0]) {
			return fmt.Errorf("the standby decides %d Deployments, want shard 0's %d", len(got), len(want[0]))
		}
		return nil
	})
	line := fmt.Sprintf("TAKEOVER shard=0/%d deployments=%d leads-after=%s decides-all-after=%s", count, len(want[0]),
		leads.Round(100*time.Millisecond), time.Since(killed).Round(100*time.Millisecond))
	t.Log(line)
	fmt.Println(line)
}
