// Command microscaling is a Kubernetes controller that scales Deployments to
// hold a target queue length and lets a group of Deployments share capacity
// by priority, configured by microscaling.com/* annotations. main only wires
// flags, clients, leader election and HTTP to the informer and scaler
// packages.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/microscaling/microscaling/informer"
	"github.com/microscaling/microscaling/scaler"
)

type options struct {
	kubeconfig     string
	namespace      string
	interval       time.Duration
	workers        int
	queueTimeout   time.Duration
	leaderElect    bool
	leaseName      string
	leaseNamespace string
	identity       string
	metricsAddr    string
	dryRun         bool
}

func main() {
	var o options
	fs := flag.CommandLine
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "path to a kubeconfig; in-cluster config when empty")
	fs.StringVar(&o.namespace, "namespace", "", "namespace to watch; all when empty")
	fs.DurationVar(&o.interval, "interval", time.Second, "how often every group is decided")
	fs.IntVar(&o.workers, "workers", 4, "groups decided in parallel")
	fs.DurationVar(&o.queueTimeout, "queue-timeout", 500*time.Millisecond, "timeout of one nsqd or nsqlookupd request")
	fs.BoolVar(&o.leaderElect, "leader-elect", false, "hold a Lease so that only one replica writes")
	fs.StringVar(&o.leaseName, "leader-elect-lease-name", "microscaling", "name of the Lease")
	fs.StringVar(&o.leaseNamespace, "leader-elect-lease-namespace", "microscaling-system", "namespace of the Lease")
	fs.StringVar(&o.identity, "leader-elect-identity", "", "identity in the Lease; hostname_pid when empty")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "127.0.0.1:8080", "address of /metrics, /healthz and /readyz; empty: none")
	fs.BoolVar(&o.dryRun, "dry-run", false, "decide, log and emit Events, but write nothing")
	klog.InitFlags(fs)
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		klog.ErrorS(err, "microscaling failed")
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.Flush()
}

func run(ctx context.Context, o options) error {
	logger := klog.FromContext(ctx)
	cfg, err := clientcmd.BuildConfigFromFlags("", o.kubeconfig)
	if err != nil {
		return fmt.Errorf("loading client config: %w", err)
	}
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "microscaling"
	cfg.QPS, cfg.Burst = 50, 100
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("making client: %w", err)
	}
	identity := o.identity
	if identity == "" {
		host, _ := os.Hostname() // an empty hostname still leaves the pid
		identity = fmt.Sprintf("%s_%d", host, os.Getpid())
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics := scaler.NewMetrics(reg)

	broadcaster := record.NewBroadcaster(record.WithContext(ctx))
	broadcaster.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "microscaling", Host: identity})

	inf, err := informer.New(client, o.namespace, nil)
	if err != nil {
		return err
	}
	ctrl := scaler.New(scaler.Config{Interval: o.interval, Workers: o.workers, DryRun: o.dryRun},
		inf, &scaler.NSQReader{Timeout: o.queueTimeout, Metrics: metrics},
		scaler.ScaleWriter{Client: client}, recorder, metrics, clock.RealClock{})

	if o.metricsAddr != "" {
		srv, err := serve(ctx, o.metricsAddr, reg, inf)
		if err != nil {
			return err
		}
		defer srv.Close()
	}

	// Caches fill whether or not this process leads, so a standby is ready
	// and takes over warm. They stop (cancel, then wait) when run returns.
	infCtx, cancelInf := context.WithCancel(ctx)
	defer func() { cancelInf(); inf.Shutdown() }()
	if !inf.Run(infCtx) {
		return ctx.Err()
	}
	logger.Info("caches synced")
	work := func(ctx context.Context) {
		metrics.Leader.Set(1)
		defer metrics.Leader.Set(0)
		ctrl.Run(ctx)
	}
	if !o.leaderElect {
		work(ctx)
		return nil
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: o.leaseName, Namespace: o.leaseNamespace},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: identity, EventRecorder: recorder},
	}
	lost := make(chan struct{})
	leaderelection.RunOrDie(ctx, leaderelection.LeaderElectionConfig{
		Lock:            lock,
		ReleaseOnCancel: true,
		LeaseDuration:   15 * time.Second,
		RenewDeadline:   10 * time.Second,
		RetryPeriod:     2 * time.Second,
		Name:            o.leaseName,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: work,
			OnStoppedLeading: func() { close(lost) },
			OnNewLeader: func(id string) {
				logger.Info("leader", "identity", id, "self", id == identity)
			},
		},
	})
	select {
	case <-lost:
		if ctx.Err() == nil {
			// Lost the lease while running: exit so that a restart rejoins the
			// election with a clean state. Replicas are left as they are.
			return errors.New("leader election lost")
		}
	default:
	}
	return nil
}

// serve starts /metrics, /healthz and /readyz on addr.
func serve(ctx context.Context, addr string, reg *prometheus.Registry, inf *informer.Informers) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if !inf.Synced() {
			http.Error(w, "caches not synced", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, BaseContext: func(net.Listener) context.Context { return ctx }}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.FromContext(ctx).Error(err, "metrics server")
		}
	}()
	klog.FromContext(ctx).Info("serving metrics and health", "addr", l.Addr().String())
	return srv, nil
}
