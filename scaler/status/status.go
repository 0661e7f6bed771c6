// Package status owns `microscaling status` (also `kubectl microscaling
// status`) and the dashboard's reach: the managed Deployments and the
// condition the controller keeps on each, listed from the API server as
// the user (RBAC decides what each person sees); with --live, and for the
// dashboard, the controller's own /api/state, reached through a
// port-forward to the pod that holds the leader-election Lease (or a named
// pod) or at an address, with the user's credentials from the kubeconfig
// (so the controller shows only the namespaces the user may read); and the
// tables they print.
package status

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"

	"github.com/microscaling/microscaling/scaler/dashboard"
)

// maxState bounds the answer read from a controller.
const maxState = 64 << 20

// Target says where the controller is.
type Target struct {
	// Address is host:port of a controller's --metrics-addr, read directly;
	// when empty, a port-forward to port Port of Pod in Namespace is opened
	// through the API server, or when Pod is empty to the pod that holds
	// the Lease named Lease there (only the leader has state to show).
	Address   string
	Namespace string
	Lease     string
	Pod       string
	Port      int
	// Token, when set, is presented to the controller instead of the
	// kubeconfig's credentials, which still open the port-forward: a
	// token for the controller's --metrics-audiences only.
	Token string
}

// Client reaches a controller with the user's credentials: Addr is where
// its --metrics-addr answers (a port-forward's local end, or the address
// given), Transport adds the credentials.
type Client struct {
	Addr      string
	Transport http.RoundTripper
	close     func()
}

// Close ends the port-forward, if any, once it has stopped.
func (c *Client) Close() {
	if c.close != nil {
		c.close()
	}
}

// Open reaches the controller t names as the user of cfg: requests carry
// cfg's credentials (a token, a token file or an exec plugin); client
// certificates cannot be presented to the controller.
func Open(ctx context.Context, cfg *rest.Config, t Target) (*Client, error) {
	rt, err := credentials(cfg, t)
	if err != nil {
		return nil, err
	}
	c := &Client{Addr: t.Address, Transport: rt}
	if c.Addr == "" {
		if c.Addr, c.close, err = forward(ctx, cfg, t); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// credentials is what requests to the controller carry: t's Token, or
// cfg's own bearer credentials.
func credentials(cfg *rest.Config, t Target) (http.RoundTripper, error) {
	if t.Token != "" {
		return bearer{t.Token, &http.Transport{Proxy: nil}}, nil
	}
	if cfg.BearerToken == "" && cfg.BearerTokenFile == "" && cfg.ExecProvider == nil && cfg.AuthProvider == nil {
		return nil, errors.New("the kubeconfig user has no bearer token (a client certificate cannot be presented to the controller): use a user with a token, --token, or --controller-token")
	}
	rt, err := rest.TransportFor(cfg) // adds the user's credentials to every request
	if err != nil {
		return nil, fmt.Errorf("credentials from the kubeconfig: %w", err)
	}
	return rt, nil
}

// bearer adds a bearer token to every request.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

// Fetch reads the state the controller shows the user of cfg.
func Fetch(ctx context.Context, cfg *rest.Config, t Target) (*dashboard.State, error) {
	c, err := Open(ctx, cfg, t)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, (&url.URL{Scheme: "http", Host: c.Addr, Path: "/api/state"}).String(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := (&http.Client{Transport: c.Transport}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("reading the controller's state: %w", err)
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusUnauthorized:
		return nil, errors.New("the controller did not accept your token (401)")
	case http.StatusForbidden:
		return nil, errors.New("the controller refused your user (403)")
	default:
		return nil, fmt.Errorf("the controller answered %s", resp.Status)
	}
	var st dashboard.State
	if err := json.NewDecoder(io.LimitReader(resp.Body, maxState)).Decode(&st); err != nil {
		return nil, fmt.Errorf("the controller's state: %w", err)
	}
	return &st, nil
}

// Proxy serves the controller's dashboard (the page and /api/state only)
// on the local address listen, each request sent with the user's
// credentials, as kubectl proxy does for the API server. It answers only
// requests whose Host is listen itself or a loopback name: a page from
// elsewhere that rebinds its own name to 127.0.0.1 (DNS rebinding) would
// otherwise read the user's view through it.
func (c *Client) Proxy(listen string) http.Handler {
	p := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.Out.URL.Scheme, pr.Out.URL.Host = "http", c.Addr
			pr.Out.Header.Del("Authorization") // only the kubeconfig's credentials
			pr.Out.Header.Del("Cookie")
		},
		Transport: c.Transport,
	}
	mux := http.NewServeMux()
	mux.Handle("GET /{$}", p)
	mux.Handle("GET /api/state", p)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !localHost(r.Host, listen) {
			http.Error(w, "this proxy answers only for localhost", http.StatusMisdirectedRequest)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

// localHost reports whether a request's Host names the proxy: its listen
// address, or localhost or a loopback address on any port.
func localHost(host, listen string) bool {
	if host == listen {
		return true
	}
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = host
	}
	h = strings.Trim(h, "[]")
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(h)
	return err == nil && ip.Unmap().IsLoopback()
}

// forward opens a port-forward to a Ready controller pod and returns the
// local address and a function that closes it.
func forward(ctx context.Context, cfg *rest.Config, t Target) (string, func(), error) {
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return "", nil, err
	}
	pod := t.Pod
	if pod == "" {
		if pod, err = leader(ctx, client, t.Namespace, t.Lease); err != nil {
			return "", nil, err
		}
	}
	u := client.CoreV1().RESTClient().Post().Resource("pods").Namespace(t.Namespace).Name(pod).SubResource("portforward").URL()
	// WebSockets first, as kubectl does; SPDY when the server refuses the upgrade.
	ws, err := portforward.NewSPDYOverWebsocketDialer(u, cfg)
	if err != nil {
		return "", nil, err
	}
	up, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		return "", nil, err
	}
	dialer := portforward.NewFallbackDialer(ws, spdy.NewDialer(upgrader, &http.Client{Transport: up}, http.MethodPost, u), func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	fwdCtx, stop := context.WithCancel(ctx)
	readyCh := make(chan struct{})
	pf, err := portforward.NewOnAddressesWithContext(fwdCtx, dialer, []string{"127.0.0.1"}, []string{"0:" + strconv.Itoa(t.Port)}, readyCh, io.Discard, io.Discard)
	if err != nil {
		stop()
		return "", nil, err
	}
	errCh := make(chan error, 1)
	go func() { errCh <- pf.ForwardPorts() }()
	select {
	case <-readyCh:
	case err := <-errCh:
		stop()
		return "", nil, fmt.Errorf("port-forward to pod %s/%s: %w", t.Namespace, pod, err)
	case <-ctx.Done():
		stop()
		return "", nil, ctx.Err()
	}
	closeForward := func() { stop(); <-errCh } // returns once the forwarder has stopped
	ports, err := pf.GetPorts()
	if err != nil || len(ports) == 0 {
		closeForward()
		return "", nil, fmt.Errorf("port-forward to pod %s/%s: no local port", t.Namespace, pod)
	}
	return fmt.Sprintf("127.0.0.1:%d", ports[0].Local), closeForward, nil
}

// leader is the pod that holds the Lease namespace/name: the controller
// pods put their own name in it (--leader-elect-identity=$(POD_NAME)).
func leader(ctx context.Context, client kubernetes.Interface, namespace, name string) (string, error) {
	l, err := client.CoordinationV1().Leases(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("finding the leader (Lease %s/%s; without leader election name the pod with --pod): %w", namespace, name, err)
	}
	if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" {
		return "", fmt.Errorf("the Lease %s/%s names no leader: is a controller running?", namespace, name)
	}
	id := *l.Spec.HolderIdentity
	if errs := validation.IsDNS1123Subdomain(id); len(errs) > 0 {
		return "", fmt.Errorf("the Lease %s/%s names %q, which is not a pod name (run the controller with --leader-elect-identity=$(POD_NAME), or name the pod with --pod)", namespace, name, id)
	}
	return id, nil
}

// Print writes st as a table, one line a member, groups together; only
// members of namespace (all when empty) and of group (all when empty: a
// group's name without its namespace).
func Print(w io.Writer, st *dashboard.State, namespace, group string) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tGROUP\tMEMBER\tRULE\tPRIORITY\tREPLICAS\tDESIRED\tBACKLOG/TARGET\tIN/OUT\tSTART-UP\tHELD BY\tLAST REASON")
	n := 0
	for _, m := range st.Members {
		_, g, _ := strings.Cut(m.Group, "/")
		if (namespace != "" && m.Namespace != namespace) || (group != "" && g != group) {
			continue
		}
		n++
		s := m.Status
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\t%s\n", m.Namespace, or(g, "-"), m.Name, m.Rule, m.Priority,
			s.Replicas, s.Desired, backlog(s), rates(s), or(s.Startup, "-"), or(s.Held, "-"), or(reason(s), "-"))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if n == 0 {
		_, err := fmt.Fprintln(w, "no managed Deployments that you may read")
		return err
	}
	return nil
}

func backlog(s dashboard.Status) string {
	b := "-"
	if s.BacklogKnown {
		b = strconv.FormatInt(s.Backlog, 10)
	}
	var t []string
	if s.Target > 0 {
		t = append(t, strconv.FormatInt(s.Target, 10))
	}
	if s.TargetWait != "" {
		t = append(t, "wait "+s.TargetWait)
	}
	if len(t) == 0 {
		return b
	}
	return b + "/" + strings.Join(t, ",")
}

func rates(s dashboard.Status) string {
	f := func(v float64, known bool) string {
		if !known {
			return "?"
		}
		return strconv.FormatFloat(v, 'f', 1, 64) + "/s"
	}
	if !s.ArrivalKnown && !s.ServiceKnown {
		return "-"
	}
	return f(s.Arrival, s.ArrivalKnown) + " / " + f(s.Service, s.ServiceKnown)
}

func reason(s dashboard.Status) string {
	if s.Reason == "" {
		return ""
	}
	return time.UnixMilli(s.ReasonAt).UTC().Format("15:04:05") + " " + s.Reason
}

func or(s, dflt string) string {
	if s == "" {
		return dflt
	}
	return s
}
