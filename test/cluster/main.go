// Command cluster starts the test harness's local control plane (etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler, kwok nodes) and
// nsqd for a person to use, prints how to reach it, and keeps it running
// until Ctrl-C, when it stops everything it started.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/microscaling/microscaling/test/harness"
)

func main() {
	var (
		nodes  = flag.Int("nodes", 3, "kwok nodes to create")
		cpu    = flag.String("node-cpu", "4", "allocatable CPU of each node")
		memory = flag.String("node-memory", "8Gi", "allocatable memory of each node")
		pods   = flag.Int("node-pods", 110, "allocatable pods of each node")
		nsq    = flag.Bool("nsq", true, "start nsqlookupd and nsqd")
	)
	flag.Parse()
	if err := run(*nodes, *cpu, *memory, *pods, *nsq); err != nil {
		fmt.Fprintln(os.Stderr, "cluster:", err)
		os.Exit(1)
	}
}

func run(nodes int, cpu, memory string, pods int, nsq bool) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts := harness.Options{NSQ: nsq, Log: func(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }}
	for i := range nodes {
		opts.Nodes = append(opts.Nodes, harness.Node{Name: fmt.Sprintf("kwok-node-%d", i+1), CPU: cpu, Memory: memory, Pods: pods})
	}
	fmt.Fprintln(os.Stderr, "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok...")
	s, err := harness.Start(ctx, opts)
	if err != nil {
		return err
	}
	defer s.Stop()
	fmt.Printf("export KUBECONFIG=%s\n", s.Kubeconfig)
	fmt.Printf("kubectl: %s/kubectl\n", s.Bin)
	if s.NSQ != nil {
		fmt.Printf("nsqd: http://%s (tcp %s), nsqlookupd: http://%s\n", s.NSQ.HTTPAddr, s.NSQ.TCPAddr, s.NSQ.LookupdHTTPAddr)
	}
	for _, u := range s.Users {
		fmt.Printf("non-admin user %s: token %s\n", u.Name, u.Token)
	}
	fmt.Println("running; Ctrl-C stops everything")
	<-ctx.Done()
	fmt.Fprintln(os.Stderr, "stopping...")
	return nil
}
