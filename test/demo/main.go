// Command demo runs microscaling in a box on this machine, with no cluster:
// it boots the harness's control plane (kwok nodes of limited capacity) and
// nsqd, applies manifests/demo with kubectl, runs the controller, and closes
// the loop with a producer whose rate rises and falls and one NSQ consumer
// per Running consumer pod. It prints a line a second and the scale events,
// and serves the controller's dashboard. Ctrl-C stops everything.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/microscaling/microscaling/scaler/dashboard"
	"github.com/microscaling/microscaling/test/harness"
	"github.com/microscaling/microscaling/test/workload"
)

func main() {
	var (
		duration  = flag.Duration("duration", 0, "stop by itself after this long; 0 runs until Ctrl-C")
		nodes     = flag.Int("nodes", 3, "kwok nodes")
		nodeCPU   = flag.String("node-cpu", "2", "allocatable CPU per node")
		dashboard = flag.String("dashboard-addr", "127.0.0.1:8080", "where the dashboard and metrics are served")
		maxRate   = flag.Float64("max-rate", 80, "highest producer rate, messages per second")
		period    = flag.Duration("period", 4*time.Minute, "one rise and fall of the producer rate")
	)
	flag.Parse()
	if err := run(*duration, *nodes, *nodeCPU, *dashboard, *maxRate, *period); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func say(format string, args ...any) {
	fmt.Printf("%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func run(duration time.Duration, nodes int, nodeCPU, dashboard string, maxRate float64, period time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, duration)
		defer cancel()
	}
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..")

	say("starting the control plane (etcd, kube-apiserver, controller-manager, scheduler, %d kwok nodes of %s CPU) and nsqd", nodes, nodeCPU)
	say("the first run builds them from the Go module proxy: about 10 minutes on 2 cores; later runs start in seconds")
	opts := harness.Options{NSQ: true}
	for i := range nodes {
		opts.Nodes = append(opts.Nodes, harness.Node{Name: fmt.Sprintf("node-%d", i+1), CPU: nodeCPU, Memory: "8Gi"})
	}
	s, err := harness.Start(ctx, opts)
	if err != nil {
		return err
	}
	defer func() {
		say("stopping everything")
		s.Stop()
	}()
	say("control plane up: export KUBECONFIG=%s (kubectl: %s/kubectl)", s.Kubeconfig, s.Bin)

	out, err := s.Kubectl(ctx, "apply", "-k", filepath.Join(root, "manifests", "demo"))
	if err != nil {
		return err
	}
	fmt.Print(indent(out))
	// Locally the queue is the harness's nsqd, not the in-cluster Service
	// (kwok pods run nothing).
	local := fmt.Sprintf("microscaling.com/queue=nsq://%s/jobs/work", s.NSQ.HTTPAddr)
	if _, err := s.Kubectl(ctx, "-n", "demo", "annotate", "deployment", "consumer", "--overwrite", local); err != nil {
		return err
	}

	say("building and starting the controller")
	bin := filepath.Join(s.Dir, "microscaling")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, ".")
	build.Dir, build.Stdout, build.Stderr = root, os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building the controller: %w", err)
	}
	// The asked-for port if it is free, another free one if not.
	l, err := net.Listen("tcp", dashboard)
	if err != nil {
		if l, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			return err
		}
	}
	dashboard = l.Addr().String()
	l.Close()
	ctrl := exec.Command(bin, "--kubeconfig="+s.Kubeconfig, "--metrics-addr="+dashboard, "--metrics-auth=none", "--namespace=demo")
	logFile, err := os.Create(filepath.Join(s.Dir, "controller.log"))
	if err != nil {
		return err
	}
	defer logFile.Close()
	ctrl.Stdout, ctrl.Stderr = logFile, logFile
	ctrl.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := ctrl.Start(); err != nil {
		return fmt.Errorf("starting the controller: %w", err)
	}
	defer func() { _ = ctrl.Process.Signal(syscall.SIGTERM); _ = ctrl.Wait() }()
	say("dashboard: http://%s/   metrics: http://%s/metrics   controller log: %s", dashboard, dashboard, logFile.Name())

	cons := &workload.Consumers{Client: s.Client, Namespace: "demo", Selector: "app=consumer", NSQDTCPAddr: s.NSQ.TCPAddr,
		Topic: "jobs", Channel: "work", PerMessage: 100 * time.Millisecond}
	// The workload stops before the stack does (defers run last-first).
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { cons.Run(ctx) })
	wg.Go(func() {
		if err := workload.Produce(ctx, s.NSQ.TCPAddr, "jobs", workload.Schedule{Min: 5, Max: maxRate, Period: period}); err != nil {
			say("producer: %v", err)
		}
	})
	say("producer: 5 to %.0f messages/s and back every %s; each consumer pod works 100 ms per message", maxRate, period)
	say("Ctrl-C stops everything")
	return watch(ctx, "http://"+dashboard, cons, time.Now(), maxRate, period)
}

// watch prints a line a second and each new scale event until ctx ends.
func watch(ctx context.Context, base string, cons *workload.Consumers, start time.Time, maxRate float64, period time.Duration) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	var seen int64
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		st, err := state(ctx, base)
		if err != nil {
			say("waiting for the controller: %v", err)
			continue
		}
		var parts []string
		for _, m := range st.Members {
			if len(m.Points) == 0 {
				continue
			}
			p := m.Points[len(m.Points)-1]
			if m.Rule == "queue" {
				parts = append(parts, fmt.Sprintf("%s: backlog %4.0f / target %.0f, replicas %2d", m.Name, p.Backlog, p.Target, p.Current))
			} else {
				parts = append(parts, fmt.Sprintf("%s: replicas %2d", m.Name, p.Current))
			}
		}
		rate := workload.Schedule{Min: 5, Max: maxRate, Period: period}.Rate(time.Since(start))
		say("in %5.1f/s  consumers running %2d  %s", rate, cons.Count(), strings.Join(parts, "  "))
		for _, e := range st.Events {
			if e.T > seen {
				say("  event: %s", e.Message)
				seen = e.T
			}
		}
	}
}

func state(ctx context.Context, base string) (dashboard.State, error) {
	var st dashboard.State
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/state", nil)
	if err != nil {
		return st, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("state: %s", resp.Status)
	}
	return st, json.NewDecoder(resp.Body).Decode(&st)
}

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimSpace(s), "\n") {
		b.WriteString("          " + l + "\n")
	}
	return b.String()
}
