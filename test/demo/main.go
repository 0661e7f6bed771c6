// Command demo runs microscaling in a box on this machine, with no cluster:
// it boots the harness's control plane (kwok nodes of limited capacity) and
// nsqd, applies manifests/demo with kubectl, runs the controller, and closes
// the loop with a producer whose rate rises and falls and one NSQ consumer
// per Running consumer pod. It prints a line a second and the scale events,
// and serves the controller's dashboard. Ctrl-C stops everything.
//
// --queue=rabbitmq|redis|nats runs the same loop on another queue server
// (Debian's, started on 127.0.0.1 beside the control plane): the consumer's
// microscaling.com/queue names it, and consumers and producer use that
// queue's own client. RabbitMQ is read with credentials from a Secret in
// the demo namespace (microscaling.com/queue-secret).
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
	"slices"
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
		queue     = flag.String("queue", "nsq", "the queue server: nsq, rabbitmq, redis (a list) or nats (JetStream)")
	)
	flag.Parse()
	if err := run(*duration, *nodes, *nodeCPU, *dashboard, *maxRate, *period, *queue); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func say(format string, args ...any) {
	fmt.Printf("%s  %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func run(duration time.Duration, nodes int, nodeCPU, dashboard string, maxRate float64, period time.Duration, queue string) error {
	if !slices.Contains([]string{"nsq", "rabbitmq", "redis", "nats"}, queue) {
		return fmt.Errorf("--queue must be nsq, rabbitmq, redis or nats")
	}
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
	// Locally the queue is a server on this machine, not the in-cluster
	// Service (kwok pods run nothing).
	q, err := startQueue(ctx, queue, s)
	if err != nil {
		return err
	}
	defer q.stop()
	if _, err := s.Kubectl(ctx, "-n", "demo", "annotate", "deployment", "consumer", "--overwrite", "microscaling.com/queue="+q.annotation); err != nil {
		return err
	}
	ctrlArgs := []string{"controller", "--kubeconfig=" + s.Kubeconfig, "--metrics-addr=", "--metrics-auth=none", "--namespace=demo"}
	if q.secret != nil {
		args := []string{"-n", "demo", "create", "secret", "generic", "queue-reader"}
		for k, v := range q.secret {
			args = append(args, "--from-literal="+k+"="+v)
		}
		if _, err := s.Kubectl(ctx, args...); err != nil {
			return err
		}
		if _, err := s.Kubectl(ctx, "-n", "demo", "annotate", "deployment", "consumer", "--overwrite", "microscaling.com/queue-secret=queue-reader"); err != nil {
			return err
		}
		ctrlArgs = append(ctrlArgs, "--queue-secrets")
	}
	say("queue: %s (microscaling.com/queue=%s)", queue, q.annotation)

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
	ctrlArgs[2] += dashboard
	ctrl := exec.Command(bin, ctrlArgs...)
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
		Topic: "jobs", Channel: "work", PerMessage: 100 * time.Millisecond, Connect: q.connect}
	sched := workload.Schedule{Min: 5, Max: maxRate, Period: period}
	// The workload stops before the stack does (defers run last-first).
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { cons.Run(ctx) })
	wg.Go(func() {
		if q.publish != nil {
			workload.Pace(ctx, sched.Rate, q.publish)
			return
		}
		if err := workload.Produce(ctx, s.NSQ.TCPAddr, "jobs", sched); err != nil {
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

// demoQueue is the queue server the demo runs on.
type demoQueue struct {
	annotation string                                     // microscaling.com/queue
	secret     map[string]string                          // the queue-secret's data, when it needs one
	connect    func(string, func([]byte)) (func(), error) // nil: NSQ's consumers
	publish    func(n int) error                          // nil: NSQ's producer
	stop       func()
}

// startQueue starts the queue server kind on this machine (NSQ is the
// stack's own) with its queue declared, a producer connected.
func startQueue(ctx context.Context, kind string, s *harness.Stack) (*demoQueue, error) {
	if kind == "nsq" {
		return &demoQueue{annotation: fmt.Sprintf("nsq://%s/jobs/work", s.NSQ.HTTPAddr), stop: func() {}}, nil
	}
	dir, err := os.MkdirTemp("", "microscaling-demo-"+kind+"-")
	if err != nil {
		return nil, err
	}
	var srv *harness.Server
	switch kind {
	case "rabbitmq":
		srv, err = harness.NewRabbitMQ(dir)
	case "redis":
		srv, err = harness.NewRedis(dir)
	case "nats":
		srv, err = harness.NewNATS(dir)
	}
	if err != nil {
		return nil, err
	}
	say("starting %s on %s (its log in %s)", kind, srv.Addr, dir)
	if err := srv.Start(ctx); err != nil {
		return nil, err
	}
	q := &demoQueue{}
	stops := []func(){srv.Stop, func() { _ = os.RemoveAll(dir) }}
	q.stop = func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	fail := func(err error) (*demoQueue, error) { q.stop(); return nil, err }
	switch kind {
	case "rabbitmq":
		url := "amqp://guest:guest@" + srv.Addr + "/"
		if err := workload.DeclareRabbitMQ(url, "jobs"); err != nil {
			return fail(err)
		}
		publish, stop, err := workload.PublishRabbitMQ(ctx, url, "jobs")
		if err != nil {
			return fail(err)
		}
		stops = append(stops, stop)
		q.annotation, q.secret = "rabbitmq://"+srv.HTTPAddr+"/%2F/jobs", map[string]string{"username": "guest", "password": "guest"}
		q.connect, q.publish = workload.RabbitMQ(url, "jobs", 1), publish
	case "redis":
		publish, stop := workload.PublishRedisList(ctx, srv.Addr, "", "jobs")
		stops = append(stops, stop)
		q.annotation, q.connect, q.publish = "redis://"+srv.Addr+"/jobs", workload.RedisList(srv.Addr, "", "jobs"), publish
	case "nats":
		url := "nats://" + srv.Addr
		if err := workload.DeclareNATS(url, "JOBS", "jobs.>", "work"); err != nil {
			return fail(err)
		}
		publish, stop, err := workload.PublishNATS(url, "jobs.new")
		if err != nil {
			return fail(err)
		}
		stops = append(stops, stop)
		q.annotation, q.connect, q.publish = "nats://"+srv.HTTPAddr+"/JOBS/work", workload.NATS(url, "JOBS", "work"), publish
	}
	return q, nil
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
