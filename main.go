// Command microscaling is a Kubernetes controller that scales Deployments to
// hold a target queue length and lets a group of Deployments share capacity
// by priority, configured by microscaling.com/* annotations. main only wires
// flags, clients, leader election and HTTP to the informer and scaler
// packages.
package main

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
	"k8s.io/client-go/tools/record"
	logsapi "k8s.io/component-base/logs/api/v1"
	_ "k8s.io/component-base/logs/json/register" // --logging-format=json
	"k8s.io/component-base/metrics/legacyregistry"
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go's REST client, workqueue and leader election metrics
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/informer"
	"github.com/microscaling/microscaling/labels"
	"github.com/microscaling/microscaling/scaler"
	"github.com/microscaling/microscaling/scaler/access"
	"github.com/microscaling/microscaling/scaler/condition"
	"github.com/microscaling/microscaling/scaler/dashboard"
	"github.com/microscaling/microscaling/scaler/egress"
	"github.com/microscaling/microscaling/scaler/execute"
	scalermetrics "github.com/microscaling/microscaling/scaler/metrics"
	"github.com/microscaling/microscaling/scaler/podcost"
	"github.com/microscaling/microscaling/scaler/queue"
	"github.com/microscaling/microscaling/scaler/queue/nats"
	"github.com/microscaling/microscaling/scaler/queue/nsq"
	promsource "github.com/microscaling/microscaling/scaler/queue/prometheus"
	"github.com/microscaling/microscaling/scaler/queue/rabbitmq"
	"github.com/microscaling/microscaling/scaler/queue/redis"
	"github.com/microscaling/microscaling/scaler/queue/secret"
	"github.com/microscaling/microscaling/scaler/status"
)

// version is the release, from manifests/VERSION (the one place the chart,
// the kustomize image tags and the binary take it from); -ldflags
// "-X main.version=..." overrides it.
//
//go:embed manifests/VERSION
var version string

// revision is the commit built; -ldflags "-X main.revision=..." sets it,
// else the Go toolchain's VCS stamp is used.
var revision string

// build describes this binary.
type build struct{ version, revision, goVersion, platform string }

func buildInfo() build {
	b := build{version: strings.TrimSpace(version), revision: revision, goVersion: runtime.Version(), platform: runtime.GOOS + "/" + runtime.GOARCH}
	if info, ok := debug.ReadBuildInfo(); ok && b.revision == "" {
		for _, s := range info.Settings {
			if s.Key == "vcs.revision" {
				b.revision = s.Value
			}
		}
	}
	if b.revision == "" {
		b.revision = "unknown"
	}
	return b
}

func (b build) String() string {
	return fmt.Sprintf("microscaling %s (revision %s, %s, %s)", b.version, b.revision, b.goVersion, b.platform)
}

type options struct {
	syncLabels    bool
	labelInterval time.Duration
	labels        labelOptions

	kube            *kubeFlags // --kubeconfig, --context, -n (the namespace watched; all when empty), ...
	interval        time.Duration
	workers         int
	queueTimeout    time.Duration
	queueMaxBytes   int64
	queueAllow      string
	hostsPerNS      int
	sameNamespace   bool
	apiEndpoints    bool
	remainderPrio   int
	queueReads      int
	queueReadsPerNS int
	queueSecrets    bool
	idleFirst       bool
	leaderElect     bool
	force           bool
	leaseName       string
	leaseNamespace  string
	shardFlag       string
	conditionQPS    float64
	memberMetrics   string
	metricsDetail   scalermetrics.Detail
	shard           informer.Shard
	identity        string
	metricsAddr     string
	metricsAuth     string
	audiences       string
	profiling       bool
	dryRun          bool
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := runCommand(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// runCommand runs the command args name and returns its exit code: 0 ok, 1
// problems found or a failure, 2 a usage mistake.
func runCommand(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newCommand(stdin)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	klog.Flush()
	if err == nil {
		return 0
	}
	return exitCode(stderr, cmd.CommandPath(), err)
}

// newCommand is microscaling's command line, kubectl's habits throughout:
// flags before or after the command, the kubeconfig flags and
// $KUBECONFIG of k8s.io/cli-runtime (so every kubeconfig auth method
// works), no arguments print help, and the controller runs only when
// asked for by name.
func newCommand(stdin io.Reader) *cobra.Command {
	kube := newKubeFlags()
	logging := logsapi.NewLoggingConfiguration()
	root := &cobra.Command{
		Use:   "microscaling",
		Short: "Scale Deployments to hold their queues' backlog near a target",
		Long: `microscaling scales Deployments annotated microscaling.com/* to hold their
queues' backlog near its target, and lets a group of Deployments share
capacity by priority.

Exit codes: 0 ok, 1 problems found or a failure, 2 a usage mistake.`,
		Args:          noArgs,
		RunE:          func(c *cobra.Command, _ []string) error { return c.Help() },
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if err := logsapi.ValidateAndApply(logging, nil); err != nil {
				return usageError{fmt.Errorf("logging flags: %w", err)}
			}
			return nil
		},
	}
	if strings.HasPrefix(filepath.Base(os.Args[0]), "kubectl-") {
		root.Annotations = map[string]string{cobra.CommandDisplayNameAnnotation: "kubectl microscaling"}
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	kube.addFlags(root.PersistentFlags())
	logsapi.AddFlags(logging, root.PersistentFlags())
	root.AddCommand(controllerCommand(kube), syncLabelsCommand(kube), validateCommand(stdin), statusCommand(kube), dashboardCommand(kube),
		&cobra.Command{Use: "version", Short: "Print the version, revision, Go version and platform", Args: noArgs,
			Run: func(c *cobra.Command, _ []string) { fmt.Fprintln(c.OutOrStdout(), buildInfo()) }})
	return root
}

// noArgs refuses any word the flags did not take (a second command, or a
// flag's value given apart from a flag that takes none): a mistake, never
// ignored.
func noArgs(c *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	if c.HasSubCommands() {
		return usageError{fmt.Errorf("unknown command %q (%s --help lists them)", args[0], c.CommandPath())}
	}
	return usageError{fmt.Errorf("unexpected argument %q", args[0])}
}

// usageError is a mistake in how a command was called: exit code 2, as
// opposed to 1 for problems found or a failure.
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// errProblems: validate found problems and listed them; exit code 1 with
// nothing more to say.
var errProblems = errors.New("problems found")

// exitCode tells err of the command cmd ("microscaling validate") as one
// plain line on w and returns the exit code: 2 for a usage mistake, 1
// otherwise.
func exitCode(w io.Writer, cmd string, err error) int {
	if errors.Is(err, errProblems) {
		return 1
	}
	fmt.Fprintf(w, "%s failed: %v\n", cmd, err)
	if errors.As(err, new(usageError)) {
		return 2
	}
	return 1
}

func controllerCommand(kube *kubeFlags) *cobra.Command {
	c := &cobra.Command{
		Use:   "controller",
		Short: "Run the controller (in a cluster, with --leader-elect)",
		Long: `Run the controller: decide every group each --interval and scale its
members through /scale. Without --leader-elect it refuses to start while
another controller holds the Lease (--force-without-election overrides).
With no kubeconfig (flag, $KUBECONFIG or ~/.kube/config) it uses the pod's
in-cluster config; -n limits it to one namespace.`,
		Args: noArgs,
	}
	o := controllerFlags(c.Flags())
	o.kube = kube
	c.RunE = func(c *cobra.Command, _ []string) error {
		if err := o.check(); err != nil {
			return usageError{err}
		}
		return run(c.Context(), *o)
	}
	return c
}

// controllerFlags defines the controller's own flags on fs.
func controllerFlags(fs *pflag.FlagSet) *options {
	o := &options{}
	fs.DurationVar(&o.interval, "interval", time.Second, "how often every group is decided")
	fs.IntVar(&o.workers, "workers", 4, "groups decided in parallel")
	fs.DurationVar(&o.queueTimeout, "queue-timeout", 500*time.Millisecond, "timeout of one queue request, from when it is sent")
	fs.StringVar(&o.queueAllow, "queue-allow", queue.DefaultAllow, "queue endpoints tenants may name: comma-separated CIDRs (checked on the resolved address) and DNS suffixes (on the name, for example .svc.cluster.local); link-local, multicast and the API server's addresses are refused whatever it says")
	fs.IntVar(&o.remainderPrio, "remainder-max-priority", -1, "the highest pod priority a remainder grows at (its PriorityClass's value): a remainder takes room from everything at or below its priority, so it must run below the cluster's workloads")
	apiEndpointsFlag(fs, &o.apiEndpoints)
	fs.BoolVar(&o.sameNamespace, "queue-same-namespace", false, "read only queues whose in-cluster Service name (NAME.NAMESPACE[.svc...]) is in the Deployment's own namespace; bare names are refused too")
	fs.IntVar(&o.hostsPerNS, "queue-hosts-per-namespace", 32, "distinct queue hosts the Deployments of one namespace may name; the queues of hosts past it (in sorted order) are not read and their members are held; 0: no bound")
	fs.Int64Var(&o.queueMaxBytes, "queue-max-bytes", queue.DefaultMaxBytes, "largest queue server answer read; a larger one makes its queues unreadable")
	fs.IntVar(&o.queueReads, "queue-concurrency", queue.DefaultConcurrency, "queue requests in flight at once to servers that answered their last read, and as many to the others")
	fs.BoolVar(&o.queueSecrets, "queue-secrets", false, "read queue credentials from the Secret a Deployment names in microscaling.com/queue-secret (its own namespace, by name, never listed); needs the RBAC the chart's queueSecrets.enabled or manifests/queue-secrets grants")
	fs.BoolVar(&o.idleFirst, "idle-first", false, "before a scale-down, set controller.kubernetes.io/pod-deletion-cost on a queue member's pods to the messages their consumers hold (nsqd's per-client in-flight counts), so that the ReplicaSet controller deletes idle consumers first; needs the RBAC the chart's idleFirst.enabled or manifests/idle-first grants (pods patch)")
	fs.IntVar(&o.queueReadsPerNS, "queue-namespace-concurrency", queue.DefaultPerNamespace, "queue requests in flight at once for one namespace's Deployments: its share of --queue-concurrency")
	fs.BoolVar(&o.leaderElect, "leader-elect", false, "hold a Lease so that only one replica writes")
	fs.BoolVar(&o.force, "force-without-election", false, "with --leader-elect=false, run even while another controller holds the Lease (two writers: only to take over from one you know is gone)")
	fs.StringVar(&o.leaseName, "leader-elect-lease-name", "microscaling", "name of the Lease")
	fs.StringVar(&o.leaseNamespace, "leader-elect-lease-namespace", "microscaling-system", "namespace of the Lease")
	fs.StringVar(&o.identity, "leader-elect-identity", "", "identity in the Lease; hostname_pid when empty")
	fs.Float64Var(&o.conditionQPS, "condition-qps", 20, "writes a second of the microscaling.com/Scaling conditions on Deployments (their own client, never the /scale writes' rate); a new controller writes one for each managed Deployment, so 30,000 take 25 minutes at 20")
	fs.StringVar(&o.memberMetrics, "member-metrics", "full", "series each managed Deployment has on /metrics: full (every gauge, states at 0 or 1: up to 15) or compact (desired and current replicas, backlog, and a state or held reason only while set: 3 while nothing holds it), for fleets where 15 a Deployment cost too much at each scrape")
	fs.StringVar(&o.shardFlag, "shard", "", "INDEX/COUNT (as 0/3): manage only the namespaces whose name hashes to INDEX of COUNT, beside COUNT-1 other controllers that manage the rest; each shard holds a Lease of its own, the lease name followed by -INDEX-of-COUNT; empty: every namespace")
	fs.StringVar(&o.metricsAddr, "metrics-addr", "127.0.0.1:8080", "address of /metrics, /healthz, /readyz and the dashboard (/); empty: none")
	fs.StringVar(&o.audiences, "metrics-audiences", "", "comma-separated audiences every TokenReview asks for (with --metrics-auth=kubernetes): only tokens issued for one of them are accepted (kubectl create token NAME --audience=microscaling), so callers need not send a token the API server accepts; empty: the API server's own audiences")
	fs.StringVar(&o.metricsAuth, "metrics-auth", "kubernetes", "who may read /metrics, /api/state and pprof: kubernetes (a bearer token checked with TokenReview, access with SubjectAccessReview: get on /metrics, and /api/state shows the namespaces where the user may get Deployments) or none (anyone who reaches the port)")
	fs.BoolVar(&o.profiling, "profiling", false, "serve Go's pprof profiles under /debug/pprof/ on --metrics-addr")
	fs.BoolVar(&o.dryRun, "dry-run", false, "decide, log and emit Events, but write nothing")
	fs.BoolVar(&o.syncLabels, "sync-labels", false, "fill annotations from image labels for Deployments with microscaling.com/sync-labels: \"true\" (needs secrets get)")
	fs.DurationVar(&o.labelInterval, "label-sync-interval", 5*time.Minute, "how often label sync re-reads every image (a moved tag is picked up)")
	labelFlags(fs, &o.labels)
	return o
}

// check reports the first flag whose value is wrong, and keeps the shard
// it parsed.
func (o *options) check() error {
	switch {
	case o.queueMaxBytes < 1024:
		return errors.New("--queue-max-bytes: must be at least 1024")
	case o.queueReadsPerNS < 1:
		return errors.New("--queue-namespace-concurrency: must be at least 1")
	case o.queueReads < 1:
		return errors.New("--queue-concurrency: must be at least 1")
	case o.hostsPerNS < 0:
		return errors.New("--queue-hosts-per-namespace: must be 0 (no bound) or more")
	case o.metricsAuth != "kubernetes" && o.metricsAuth != "none":
		return errors.New("--metrics-auth: must be kubernetes or none")
	case !(o.conditionQPS >= 1 && o.conditionQPS <= 1000):
		return errors.New("--condition-qps: must be 1 to 1000")
	}
	detail, err := scalermetrics.ParseDetail(o.memberMetrics)
	if err != nil {
		return fmt.Errorf("--member-metrics: %w", err)
	}
	o.metricsDetail = detail
	shard, err := informer.ParseShard(o.shardFlag)
	if err != nil {
		return fmt.Errorf("--shard: %w", err)
	}
	o.shard = shard
	if _, err := queue.ParsePolicy(o.queueAllow, nil); err != nil {
		return fmt.Errorf("--queue-allow: %w", err)
	}
	if _, err := labels.ParseKeys(o.labels.keys); err != nil {
		return fmt.Errorf("--image-label-keys: %w", err)
	}
	return nil
}

// lease is the name of the Lease: a shard's has -INDEX-of-COUNT after it.
func (o *options) lease() string {
	if o.shard.Sharded() {
		return fmt.Sprintf("%s-%d-of-%d", o.leaseName, o.shard.Index, o.shard.Count)
	}
	return o.leaseName
}

// labelOptions are the flags of label sync.
type labelOptions struct {
	platform, prefixes, keys string
	proxyFromEnv             bool
}

func labelFlags(fs *pflag.FlagSet, l *labelOptions) {
	fs.StringVar(&l.keys, "image-label-keys", strings.Join(labels.DefaultKeys, ","), "the microscaling.com/ keys image labels may set (queue, group and min-replicas are left out by default: an image publisher would pick the address read, the Deployments that share room, or force replicas)")
	fs.StringVar(&l.platform, "platform", "linux/amd64", "platform picked from a multi-arch image index")
	fs.StringVar(&l.prefixes, "image-label-prefixes", strings.Join(labels.DefaultPrefixes, ","), "label prefixes exposed as image-labels.microscaling.com/<container>")
	fs.BoolVar(&l.proxyFromEnv, "registry-proxy-from-env", false, "reach registries through the proxy HTTPS_PROXY/HTTP_PROXY/NO_PROXY name (off: tenants name registries and token realms, and a proxy would reach places the controller itself cannot)")
}

func newSyncer(client kubernetes.Interface, recorder record.EventRecorder, l labelOptions, timeout, tagTTL time.Duration, deny *egress.Denied) (*labels.Syncer, error) {
	p, err := v1.ParsePlatform(l.platform)
	if err != nil {
		return nil, fmt.Errorf("--platform %q: %w", l.platform, err)
	}
	keys, err := labels.ParseKeys(l.keys)
	if err != nil {
		return nil, fmt.Errorf("--image-label-keys: %w", err)
	}
	r := labels.NewResolver(*p, timeout, tagTTL)
	r.ProxyFromEnvironment, r.Deny = l.proxyFromEnv, deny
	s := labels.NewSyncer(client, recorder, r, strings.Split(l.prefixes, ","))
	s.Keys = keys
	return s, nil
}

func validateCommand(stdin io.Reader) *cobra.Command {
	var paths []string
	c := &cobra.Command{
		Use:   "validate -f FILE|DIR|-",
		Short: "Check manifests' microscaling.com/* annotations (exit 1 on a problem)",
		Long: `Check the microscaling.com/* annotations of manifests with the controller's
own parser, for CI: every problem is listed, and the exit code is 1 when
there is one.`,
		Args: noArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			bad, err := validate(paths, stdin, c.OutOrStdout())
			if err == nil && bad {
				return errProblems
			}
			return err
		},
	}
	c.Flags().StringArrayVarP(&paths, "filename", "f", nil, "a manifest file, a directory of them (.yaml, .yml, .json, recursively) or - for standard input; repeatable")
	return c
}

// validate checks the microscaling.com/* annotations of the manifests at
// paths: it reports whether any was wrong.
func validate(paths []string, stdin io.Reader, out io.Writer) (bool, error) {
	if len(paths) == 0 {
		return false, usageError{errors.New("no input: give -f FILE, -f DIR or -f -")}
	}
	checked, bad := 0, 0
	check := func(r io.Reader, source string) error {
		n, problems, err := annotations.CheckManifests(r, source)
		checked += n
		bad += len(problems)
		for _, p := range problems {
			fmt.Fprintln(out, p)
		}
		return err
	}
	for _, p := range paths {
		if p == "-" {
			if err := check(stdin, "-"); err != nil {
				return false, err
			}
			continue
		}
		err := filepath.WalkDir(p, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if d.IsDir() || (path != p && !slices.Contains([]string{".yaml", ".yml", ".json"}, filepath.Ext(path))) {
				return nil
			}
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			return check(f, path)
		})
		if err != nil {
			return false, fmt.Errorf("validate: %w", err)
		}
	}
	fmt.Fprintf(out, "%d objects with microscaling.com/ annotations checked, %d problems\n", checked, bad)
	return bad > 0, nil
}

// reachFlags are the flags that reach the controller itself, as the user
// of the kubeconfig: status --live and dashboard.
type reachFlags struct {
	kube   *kubeFlags
	target status.Target
}

func addReachFlags(fs *pflag.FlagSet, kube *kubeFlags) *reachFlags {
	r := &reachFlags{kube: kube}
	fs.StringVar(&r.target.Token, "controller-token", "", "a bearer token presented to the controller only (one issued for its --metrics-audiences: kubectl create token NAME --audience=microscaling); the kubeconfig's credentials still open the port-forward")
	fs.StringVar(&r.target.Namespace, "controller-namespace", "microscaling-system", "namespace of the controller's pods")
	fs.StringVar(&r.target.Lease, "lease", "microscaling", "the controller's leader-election Lease: the port-forward goes to the pod that holds it")
	fs.StringVar(&r.target.Pod, "pod", "", "port-forward to this controller pod instead of the Lease holder (a controller without leader election)")
	fs.IntVar(&r.target.Port, "port", 8080, "the controller's --metrics-addr port")
	fs.StringVar(&r.target.Address, "address", "", "host:port of the controller's --metrics-addr, read directly instead of through a port-forward")
	return r
}

// kubeFlags are kubectl's kubeconfig flags: --kubeconfig, --context,
// -n/--namespace, --token, --as, --server, client certificates...
// client-go's clientcmd binds them, as k8s.io/cli-runtime's ConfigFlags
// does on top of it (that package also brings text/template and the
// printers, which turn off the linker's dead-code removal: a 53 MB binary
// became 135 MB).
type kubeFlags struct {
	rules     *clientcmd.ClientConfigLoadingRules
	overrides clientcmd.ConfigOverrides
}

func newKubeFlags() *kubeFlags {
	return &kubeFlags{rules: clientcmd.NewDefaultClientConfigLoadingRules()}
}

func (k *kubeFlags) addFlags(fs *pflag.FlagSet) {
	fs.StringVar(&k.rules.ExplicitPath, clientcmd.RecommendedConfigPathFlag, "", "path to the kubeconfig; $KUBECONFIG or ~/.kube/config when empty, and in a pod without either its in-cluster config")
	clientcmd.BindOverrideFlags(&k.overrides, fs, clientcmd.RecommendedConfigOverrideFlags(""))
}

// loader merges the kubeconfig files with the flags; in a pod with no
// kubeconfig, the in-cluster config.
func (k *kubeFlags) loader() clientcmd.ClientConfig {
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(k.rules, &k.overrides)
}

// restConfig is the client config the kubeconfig flags give.
func restConfig(kube *kubeFlags) (*rest.Config, error) {
	cfg, err := kube.loader().ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("loading the kubeconfig: %w", err)
	}
	return cfg, nil
}

func statusCommand(kube *kubeFlags) *cobra.Command {
	var all, live bool
	var group, format string
	c := &cobra.Command{
		Use:   "status",
		Short: "Each managed Deployment's state, read with your own credentials",
		Long: `Each managed Deployment of the namespace (-n, else the kubeconfig
context's) or of every namespace (-A): its group, rule, replicas and the
microscaling.com/Scaling condition the controller keeps on it (whether it
follows the load, what holds it and since when, its last scale). Read from
the API server as you, so RBAC decides what you see and every kubeconfig
auth method works.

With --live, the controller's own view instead (backlog, rates), through a
port-forward to the pod that holds its Lease.`,
		Example: `  kubectl microscaling status -n shop
  kubectl microscaling status -A -o json
  kubectl get deploy -o custom-columns='NAME:.metadata.name,SCALING:.status.conditions[?(@.type=="microscaling.com/Scaling")].reason'`,
		Args: noArgs,
	}
	c.Flags().BoolVarP(&all, "all-namespaces", "A", false, "every namespace you may list Deployments in")
	c.Flags().StringVar(&group, "group", "", "only this group (its name, without the namespace)")
	c.Flags().StringVarP(&format, "output", "o", "table", "output: table or json")
	c.Flags().BoolVar(&live, "live", false, "ask the controller (through a port-forward) for its live view: backlog and rates")
	reach := addReachFlags(c.Flags(), kube)
	c.RunE = func(c *cobra.Command, _ []string) error {
		if format != "table" && format != "json" {
			return usageError{errors.New("--output: must be table or json")}
		}
		if live {
			return liveStatus(c.Context(), reach, all, group, format, c.OutOrStdout())
		}
		namespace := ""
		if !all {
			ns, _, err := kube.loader().Namespace()
			if err != nil {
				return fmt.Errorf("the namespace: %w", err)
			}
			namespace = ns
		}
		cfg, err := restConfig(kube)
		if err != nil {
			return err
		}
		client, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			return err
		}
		ms, err := status.Members(c.Context(), client, namespace)
		if err != nil {
			return err
		}
		if format == "json" {
			return json.NewEncoder(c.OutOrStdout()).Encode(ms)
		}
		return status.PrintMembers(c.OutOrStdout(), ms, all, group, time.Now())
	}
	return c
}

// liveStatus prints what the controller shows the user of the kubeconfig.
func liveStatus(ctx context.Context, reach *reachFlags, all bool, group, format string, out io.Writer) error {
	namespace := ""
	if !all {
		namespace = reach.kube.overrides.Context.Namespace
	}
	cfg, err := restConfig(reach.kube)
	if err != nil {
		return err
	}
	st, err := status.Fetch(ctx, cfg, reach.target)
	if err != nil {
		return err
	}
	if format == "json" {
		keep := func(ns string) bool { return namespace == "" || ns == namespace }
		return json.NewEncoder(out).Encode(st.Filter(keep))
	}
	return status.Print(out, st, namespace, group)
}

func dashboardCommand(kube *kubeFlags) *cobra.Command {
	var listen string
	c := &cobra.Command{
		Use:   "dashboard",
		Short: "The controller's dashboard on a local address, as you",
		Args:  noArgs,
	}
	c.Flags().StringVar(&listen, "listen", "127.0.0.1:8081", "local address of the dashboard (keep it on loopback: it acts as you)")
	reach := addReachFlags(c.Flags(), kube)
	c.RunE = func(c *cobra.Command, _ []string) error {
		cfg, err := restConfig(kube)
		if err != nil {
			return err
		}
		ctx := c.Context()
		cl, err := status.Open(ctx, cfg, reach.target)
		if err != nil {
			return err
		}
		defer cl.Close()
		l, err := net.Listen("tcp", listen)
		if err != nil {
			return fmt.Errorf("--listen %s: %w", listen, err)
		}
		srv := &http.Server{Handler: cl.Proxy(l.Addr().String()), ReadHeaderTimeout: 5 * time.Second, WriteTimeout: time.Minute, IdleTimeout: 2 * time.Minute}
		context.AfterFunc(ctx, func() { _ = srv.Close() })
		fmt.Fprintf(c.OutOrStdout(), "the dashboard, as you: http://%s/ (Ctrl-C stops)\n", l.Addr())
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return err
		}
		return nil
	}
	return c
}

// syncLabelsCommand is the one-shot label sync, for a Job or CronJob.
func syncLabelsCommand(kube *kubeFlags) *cobra.Command {
	var dryRun, apiEndpoints bool
	var workers, burst int
	var qps float64
	var timeout time.Duration
	var lo labelOptions
	c := &cobra.Command{
		Use:   "sync-labels",
		Short: "Fill annotations from image labels once, then exit",
		Long: `Fill the microscaling.com/* annotations of Deployments annotated
microscaling.com/sync-labels: "true" from their images' labels, once (for a
Job or CronJob); -n limits it to one namespace, all when empty.`,
		Args: noArgs,
	}
	fs := c.Flags()
	fs.BoolVar(&dryRun, "dry-run", false, "print each patch instead of applying it")
	apiEndpointsFlag(fs, &apiEndpoints)
	fs.IntVar(&workers, "workers", 8, "Deployments synced in parallel")
	fs.Float64Var(&qps, "kube-api-qps", 500, "requests per second to the API server")
	fs.IntVar(&burst, "kube-api-burst", 1000, "burst of requests to the API server")
	fs.DurationVar(&timeout, "registry-timeout", 10*time.Second, "timeout of one registry request")
	labelFlags(fs, &lo)
	c.RunE = func(c *cobra.Command, _ []string) error {
		ctx := c.Context()
		cfg, err := restConfig(kube)
		if err != nil {
			return err
		}
		client, err := newClient(cfg, float32(qps), burst)
		if err != nil {
			return err
		}
		recorder := labels.NewSyncRecorder(ctx, client, "microscaling-sync-labels")
		// One pass: each tag is resolved once however many Deployments use it.
		deny, err := apiServerAddrs(ctx, cfg.Host)
		if err != nil {
			return err
		}
		denied := egress.NewDenied(deny...)
		if apiEndpoints {
			live, err := informer.ListAPIServer(ctx, client)
			if err != nil {
				return err
			}
			denied.SetLive(live)
		}
		s, err := newSyncer(client, recorder, lo, timeout, time.Hour, denied)
		if err != nil {
			return usageError{err}
		}
		s.DryRun, s.Out = dryRun, c.OutOrStdout()
		t0 := time.Now()
		st, err := s.SyncAll(ctx, kube.overrides.Context.Namespace, workers)
		fmt.Fprintf(c.ErrOrStderr(), "sync-labels: %d Deployments, %d patched, %d failed in %s\n", st.Deployments, st.Patched, st.Failed, time.Since(t0).Round(time.Millisecond))
		return err
	}
	return c
}

// newClient is a client of its own rate limit on cfg.
func newClient(cfg *rest.Config, qps float32, burst int, wrap ...func(http.RoundTripper) http.RoundTripper) (kubernetes.Interface, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.UserAgent = "microscaling"
	cfg.QPS, cfg.Burst = qps, burst
	// Protobuf, as the Kubernetes controllers use: lists of 10,000
	// Deployments decode in a fraction of the time and memory of JSON.
	// Custom resources fall back to JSON.
	cfg.ContentType = k8sruntime.ContentTypeProtobuf
	cfg.AcceptContentTypes = k8sruntime.ContentTypeProtobuf + "," + k8sruntime.ContentTypeJSON
	for _, w := range wrap {
		cfg.Wrap(w)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("making client: %w", err)
	}
	return client, nil
}

// newBroadcaster sends Events to the API server. client-go's defaults
// merge similar Events into "combined from similar events" after 10 and
// drop all but 25 per object in five minutes; every scale write is a
// decision a user wants to read, so each keeps its own Event: up to 600
// similar ones in ten minutes before they are combined, and a per-object
// budget of 120 Events refilled at one a second.
func newBroadcaster(ctx context.Context, client kubernetes.Interface) record.EventBroadcaster {
	b := record.NewBroadcaster(record.WithContext(ctx), record.WithCorrelatorOptions(record.CorrelatorOptions{
		MaxEvents: 600, MaxIntervalInSeconds: 600, BurstSize: 120, QPS: 1,
	}))
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: client.CoreV1().Events("")})
	return b
}

// apiEndpointsFlag defines --apiserver-endpoints on fs.
func apiEndpointsFlag(fs *pflag.FlagSet, v *bool) {
	fs.BoolVar(v, "apiserver-endpoints", true, "refuse, as addresses tenants name, the API server's own endpoints as the EndpointSlices of default/kubernetes list them, besides the address the client config names (needs list and watch on endpointslices in namespace default; off: the client config's address only)")
}

// apiServerAddrs are the API server's addresses, which no queue address
// may name.
func apiServerAddrs(ctx context.Context, host string) ([]netip.AddrPort, error) {
	u, err := url.Parse(host)
	if err != nil || u.Host == "" {
		u, err = url.Parse("https://" + host)
		if err != nil {
			return nil, fmt.Errorf("API server address %q: %w", host, err)
		}
	}
	port := u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	return queue.APIServerAddrs(ctx, net.JoinHostPort(u.Hostname(), port))
}

func run(ctx context.Context, o options) error {
	logger := klog.FromContext(ctx)
	// Ours, beside component-base's registry, which holds the Go and
	// process collectors and client-go's REST client, workqueue and leader
	// election metrics (from their metrics providers).
	reg := prometheus.NewRegistry()
	metrics := scalermetrics.NewMetrics(reg)
	b := buildInfo()
	scalermetrics.RegisterBuildInfo(reg, b.version, b.revision, b.goVersion, b.platform)
	kubeCfg, err := restConfig(o.kube)
	if err != nil {
		return err
	}
	client, err := newClient(kubeCfg, 50, 100, metrics.CountRequests)
	if err != nil {
		return err
	}
	if !o.leaderElect {
		// Before anything starts: never a second writer by mistake.
		if err := noOtherLeader(ctx, client, o); err != nil {
			return err
		}
	}
	logger.Info("starting", "version", b.version, "revision", b.revision)
	identity := o.identity
	if identity == "" {
		host, _ := os.Hostname() // an empty hostname still leaves the pid
		identity = fmt.Sprintf("%s_%d", host, os.Getpid())
	}

	broadcaster := newBroadcaster(ctx, client)
	defer broadcaster.Shutdown()
	recorder := broadcaster.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "microscaling", Host: identity})

	hc := &health{interval: o.interval}
	var labelRun func(context.Context) // label sync, when on: only the leader runs it
	inf, err := informer.New(client, o.kube.overrides.Context.Namespace, o.shard)
	if err != nil {
		return err
	}
	inf.QueuesInNamespace = o.sameNamespace
	deny, err := apiServerAddrs(ctx, kubeCfg.Host)
	if err != nil {
		return err
	}
	denied := egress.NewDenied(deny...)
	if o.apiEndpoints {
		if err := inf.WatchAPIServer(client, denied.SetLive); err != nil {
			return err
		}
	}
	queuePolicy, err := queue.ParsePolicy(o.queueAllow, denied)
	if err != nil {
		return fmt.Errorf("--queue-allow: %w", err)
	}
	history := dashboard.NewHistory(600, 100)
	cfg := scaler.Config{Interval: o.interval, Workers: o.workers, History: history, QueueHostsPerNamespace: o.hostsPerNS, RemainderMaxPriority: int32(o.remainderPrio)}
	var conditions *condition.Writer
	var kept execute.Conditions // nil unless conditions are kept (an interface holding a nil pointer is not nil)
	if !o.dryRun {
		// Each member's condition on its Deployment, on a client of its
		// own: at most --condition-qps writes a second whatever the members
		// do, never taking the /scale writes' rate.
		condClient, err := newClient(kubeCfg, float32(o.conditionQPS), int(2*o.conditionQPS), metrics.CountRequests)
		if err != nil {
			return err
		}
		conditions = condition.NewWriter(condClient, clock.RealClock{}, 10*time.Second)
		kept = conditions
		if o.idleFirst {
			// The deletion costs on a client of their own: a scale-down of
			// many replicas is as many pod writes, never taking the
			// /scale writes' rate.
			podClient, err := newClient(kubeCfg, 20, 40, metrics.CountRequests)
			if err != nil {
				return err
			}
			cfg.IdleFirst = &podcost.Marker{Client: podClient, Pods: inf.Pods, Deployments: inf.Deployments}
		}
	}
	exec := execute.New(execute.Config{Writer: execute.ScaleWriter{Client: client}, Recorder: recorder, Metrics: metrics,
		Conditions: kept, History: history, DryRun: o.dryRun}, clock.RealClock{})
	ctrl := scaler.New(cfg, inf, sources(queuePolicy, &o, metrics, client), exec, metrics, clock.RealClock{})
	reg.MustRegister(scalermetrics.Collector(ctrl, o.metricsDetail)) // the per-Deployment gauges

	if o.syncLabels {
		// Label sync reads Secrets and ServiceAccounts, patches Deployments
		// and records its Events on a client of its own: however many pull
		// secrets tenants list or images change, it cannot spend the rate
		// limit the /scale writes and their Events need.
		labelClient, err := newClient(kubeCfg, 10, 20, metrics.CountRequests)
		if err != nil {
			return err
		}
		labelEvents := newBroadcaster(ctx, labelClient)
		defer labelEvents.Shutdown()
		labelRecorder := labelEvents.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "microscaling", Host: identity})
		syncer, err := newSyncer(labelClient, labelRecorder, o.labels, 10*time.Second, o.labelInterval/2, denied)
		if err != nil {
			return err
		}
		lc := labels.NewController(syncer, inf.Deployments, o.labelInterval)
		if err := inf.AddDeploymentHandler(lc.Handler()); err != nil {
			return err
		}
		labelRun = func(ctx context.Context) { lc.Run(ctx, 2) }
	}

	if o.metricsAddr != "" {
		var rv *access.Reviewer
		if o.metricsAuth == "kubernetes" {
			// Reviews use a client of their own: whoever calls /api/state
			// cannot use up the rate limit the scale writes need.
			reviews, err := newClient(kubeCfg, 20, 40)
			if err != nil {
				return err
			}
			rv = access.NewReviewer(reviews, 10*time.Second)
			rv.Audiences = audiences(o.audiences)
		}
		srv, err := serve(ctx, o.metricsAddr, prometheus.Gatherers{reg, legacyregistry.DefaultGatherer}, inf, hc, history, rv, o.profiling)
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
	logger.Info("caches synced", "shard", o.shard)
	work := func(ctx context.Context) {
		metrics.Leader.Set(1)
		hc.lead(true, ctrl.LastTick)
		defer func() { hc.lead(false, nil); metrics.Leader.Set(0) }()
		var wg sync.WaitGroup
		if labelRun != nil {
			wg.Go(func() { labelRun(ctx) })
		}
		if conditions != nil {
			// Enough workers that the API server's latency does not set the
			// pace below the rate: one for each 10 writes a second.
			wg.Go(func() { conditions.Run(ctx, min(max(2, int(o.conditionQPS/10)), 32)) })
		}
		ctrl.Run(ctx)
		wg.Wait()
	}
	if !o.leaderElect {
		work(ctx)
		return nil
	}
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: o.lease(), Namespace: o.leaseNamespace},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: identity, EventRecorder: recorder},
	}
	return lead(ctx, lock, o.lease(), identity, work, hc.newLeader)
}

// noOtherLeader refuses to run a controller without leader election while
// another holds the Lease (renewed within its duration): two writers would
// fight over every Deployment. --force-without-election overrides; a
// Lease that cannot be read (absent, or not ours to read) does not stop it.
func noOtherLeader(ctx context.Context, client kubernetes.Interface, o options) error {
	l, err := client.CoordinationV1().Leases(o.leaseNamespace).Get(ctx, o.lease(), metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" || l.Spec.RenewTime == nil || l.Spec.LeaseDurationSeconds == nil {
		return nil
	}
	expires := l.Spec.RenewTime.Add(time.Duration(*l.Spec.LeaseDurationSeconds) * time.Second)
	if time.Now().After(expires) {
		return nil
	}
	if o.force {
		klog.FromContext(ctx).Info("running without leader election beside a holder of the Lease, as forced", "lease", klog.KObj(l), "holder", *l.Spec.HolderIdentity)
		return nil
	}
	return fmt.Errorf("the Lease %s/%s is held by %s (until %s): another controller is running; run with --leader-elect, or --force-without-election to write beside it",
		l.Namespace, l.Name, *l.Spec.HolderIdentity, expires.UTC().Format(time.RFC3339))
}

// lead runs work while holding the Lease, until ctx ends or the Lease is
// lost. The election runs on a context of its own that ends only once work
// has returned, so the Lease is released after the last write, never while
// a decision is still in flight.
func lead(ctx context.Context, lock resourcelock.Interface, name, identity string, work func(context.Context), newLeader func(id string)) error {
	logger := klog.FromContext(ctx)
	electCtx, endElection := context.WithCancel(context.WithoutCancel(ctx))
	defer endElection()
	var mu sync.Mutex // guards working
	working := false
	stopWaiting := context.AfterFunc(ctx, func() {
		mu.Lock()
		defer mu.Unlock()
		if !working {
			endElection() // not leading: nothing to wait for
		}
	})
	defer stopWaiting()
	lost := make(chan struct{})
	leaderelection.RunOrDie(electCtx, leaderelection.LeaderElectionConfig{
		Lock:            lock,
		ReleaseOnCancel: true,
		LeaseDuration:   15 * time.Second,
		RenewDeadline:   10 * time.Second,
		RetryPeriod:     2 * time.Second,
		Name:            name,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(leCtx context.Context) {
				mu.Lock()
				if electCtx.Err() != nil {
					mu.Unlock()
					return
				}
				working = true
				mu.Unlock()
				workCtx, stop := context.WithCancel(leCtx)
				defer stop()
				defer context.AfterFunc(ctx, stop)()
				work(workCtx)
				endElection() // the work has returned: now the Lease may go
			},
			OnStoppedLeading: func() { close(lost) },
			OnNewLeader: func(id string) {
				logger.Info("leader", "identity", id, "self", id == identity)
				if newLeader != nil {
					newLeader(id)
				}
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

// health answers /healthz: while leading, the loop must have finished a
// tick within three intervals.
type health struct {
	interval time.Duration
	mu       sync.Mutex // guards since, last and leader
	since    time.Time  // when leading began; zero while not leading
	last     func() time.Time
	// leader is the identity the Lease names; empty when unknown or
	// without election.
	leader string
}

// newLeader notes the identity the Lease names.
func (h *health) newLeader(id string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.leader = id
}

// standby is the leader's identity when this process stands by; empty
// while it leads, runs without election or knows no leader yet.
func (h *health) standby() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.since.IsZero() {
		return ""
	}
	return h.leader
}

// lead marks the start or end of leading; last tells when the loop
// finished its last tick.
func (h *health) lead(leading bool, last func() time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.since, h.last = time.Time{}, last
	if leading {
		h.since = time.Now()
	}
}

// check returns an error when the loop makes no progress.
func (h *health) check(now time.Time) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.since.IsZero() {
		return nil // standing by: healthy
	}
	last := h.last()
	if last.Before(h.since) {
		last = h.since
	}
	if late := now.Sub(last); late > 3*h.interval {
		return fmt.Errorf("no tick finished for %s (interval %s)", late.Round(time.Millisecond), h.interval)
	}
	return nil
}

// serve starts /metrics, /healthz, /readyz and the dashboard (/ and
// /api/state) on addr. With a Reviewer, /metrics and pprof need get on
// their path, and /api/state shows each user the namespaces where they
// may get Deployments; /healthz and /readyz stay open. A standby has no
// state to show: its /api/state says so and names the leader.
func serve(ctx context.Context, addr string, g prometheus.Gatherer, inf *informer.Informers, h *health, history *dashboard.History, rv *access.Reviewer, profiling bool) (*http.Server, error) {
	guard := func(h http.Handler) http.Handler { return h }
	var view dashboard.Viewer
	if rv != nil {
		guard = rv.Require
		view = func(r *http.Request, namespaces []string) (func(string) bool, error) {
			u, err := rv.Authenticate(r.Context(), r)
			if err != nil {
				return nil, err
			}
			all, allowed, err := rv.Namespaces(r.Context(), u, namespaces)
			if err != nil || all {
				return nil, err
			}
			return func(ns string) bool { return allowed[ns] }, nil
		}
	}
	mux := http.NewServeMux()
	local := dashboard.Dashboard(history, view, access.Deny)
	mux.Handle("/", local)
	mux.Handle("/api/state", standingBy(h, rv, local))
	if profiling {
		mux.Handle("/debug/pprof/", guard(http.HandlerFunc(pprof.Index)))
		mux.Handle("/debug/pprof/profile", guard(http.HandlerFunc(pprof.Profile)))
		mux.Handle("/debug/pprof/symbol", guard(http.HandlerFunc(pprof.Symbol)))
		mux.Handle("/debug/pprof/trace", guard(http.HandlerFunc(pprof.Trace)))
	}
	mux.Handle("/metrics", guard(promhttp.HandlerFor(g, promhttp.HandlerOpts{})))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := h.check(time.Now()); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
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
	// Bounded, so that slow clients cannot hold connections (pprof profiles take up to a minute).
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 2 * time.Minute, IdleTimeout: 2 * time.Minute,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			klog.FromContext(ctx).Error(err, "metrics server")
		}
	}()
	klog.FromContext(ctx).Info("serving metrics and health", "addr", l.Addr().String())
	return srv, nil
}

// standingBy answers /api/state on a standby with 503 and the leader's
// identity (to a caller whose token is good): only the leader decides, and
// `status` finds it through the Lease. Nothing is relayed, so a token is
// only ever sent to the pod its holder chose. The leader and a process
// without election serve their own state.
func standingBy(h *health, rv *access.Reviewer, local http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		leader := h.standby()
		if leader == "" {
			local.ServeHTTP(w, r)
			return
		}
		if rv != nil {
			if _, err := rv.Authenticate(r.Context(), r); err != nil {
				access.Deny(w, err)
				return
			}
		}
		http.Error(w, fmt.Sprintf("this replica stands by; the leader is %q (the holder of the Lease)", leader), http.StatusServiceUnavailable)
	})
}

// audiences splits a comma-separated list, dropping empty items.
func audiences(list string) []string {
	var out []string
	for a := range strings.SplitSeq(list, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}

// sources is the queue source of every scheme, all under one Fetcher: one
// set of read slots, per-namespace shares, timeouts and answer bounds.
func sources(p queue.Policy, o *options, m *scalermetrics.Metrics, client kubernetes.Interface) *queue.Sources {
	f := &queue.Fetcher{Client: queue.NewClient(p), Timeout: o.queueTimeout, Metrics: m,
		MaxBytes: o.queueMaxBytes, Concurrency: o.queueReads, PerNamespace: o.queueReadsPerNS}
	if o.queueSecrets {
		f.Credentials = &secret.Reader{Client: client}
	}
	n := &nsq.NSQReader{Fetcher: f, HostsPerNamespace: o.hostsPerNS}
	return queue.NewSources(map[string]queue.Source{
		annotations.SchemeNSQ:        n,
		annotations.SchemeNSQLookupd: n,
		annotations.SchemeRabbitMQ:   rabbitmq.NewReader(f),
		annotations.SchemeRedis:      &redis.Reader{Fetcher: f, Dial: p.DialContext()},
		annotations.SchemeNATS:       &nats.Reader{Fetcher: f},
		annotations.SchemePrometheus: promsource.NewReader(f),
	})
}
