package status

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/microscaling/microscaling/scaler/dashboard"
)

func TestPrint(t *testing.T) {
	at := time.Date(2026, 11, 30, 15, 4, 5, 0, time.UTC).UnixMilli()
	st := &dashboard.State{Members: []dashboard.MemberHistory{
		{Namespace: "team-a", Group: "team-a/jobs", Name: "consumer", Rule: "queue", Priority: 1, Status: dashboard.Status{
			Replicas: 5, Desired: 6, Backlog: 120, BacklogKnown: true, Target: 50, Arrival: 51, ArrivalKnown: true, Service: 9.8, ServiceKnown: true, Startup: "1.2s", Held: "max", Reason: "5 -> 6: backlog 120 > target 50", ReasonAt: at}},
		{Namespace: "team-a", Group: "team-a/jobs", Name: "remainder", Rule: "remainder", Priority: 2, Status: dashboard.Status{Replicas: 9, Desired: 9, Held: "room"}},
		{Namespace: "team-b", Group: "team-b/other", Name: "worker", Rule: "queue", Priority: 1, Status: dashboard.Status{Replicas: 1, Desired: 1, TargetWait: "5s", Held: "conflict"}},
	}}
	var b bytes.Buffer
	if err := Print(&b, st, "team-a", ""); err != nil {
		t.Fatal(err)
	}
	want := `NAMESPACE  GROUP  MEMBER     RULE       PRIORITY  REPLICAS  DESIRED  BACKLOG/TARGET  IN/OUT          START-UP  HELD BY  LAST REASON
team-a     jobs   consumer   queue      1         5         6        120/50          51.0/s / 9.8/s  1.2s      max      15:04:05 5 -> 6: backlog 120 > target 50
team-a     jobs   remainder  remainder  2         9         9        -               -               -         room     -
`
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
	b.Reset()
	if err := Print(&b, st, "", "other"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "-/wait 5s") || !strings.Contains(b.String(), "conflict") || strings.Contains(b.String(), "team-a") {
		t.Errorf("group other:\n%s", b.String())
	}
	b.Reset()
	if err := Print(&b, st, "team-c", ""); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "no managed Deployments that you may read") {
		t.Errorf("nothing to show:\n%s", b.String())
	}
}

// The local dashboard proxy answers only for its own address and loopback
// names: a rebinding page's Host is refused before anything is forwarded.
func TestProxyChecksHost(t *testing.T) {
	forwarded := 0
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		forwarded++
		_, _ = w.Write([]byte(`{"members":[]}`))
	}))
	defer upstream.Close()
	c := &Client{Addr: strings.TrimPrefix(upstream.URL, "http://"), Transport: http.DefaultTransport}
	h := c.Proxy("127.0.0.1:8081")
	for host, ok := range map[string]bool{
		"127.0.0.1:8081":      true,
		"localhost:8081":      true,
		"LOCALHOST":           true,
		"[::1]:8081":          true,
		"127.0.0.2:9":         true,
		"evil.example:8081":   false,
		"10.0.0.1:8081":       false,
		"127.0.0.1.nip.io:80": false,
	} {
		forwarded = 0
		req := httptest.NewRequest(http.MethodGet, "http://x/api/state", nil)
		req.Host = host
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if got := rec.Code == http.StatusOK && forwarded == 1; got != ok {
			t.Errorf("Host %q: status %d, forwarded %d; want served %v", host, rec.Code, forwarded, ok)
		}
	}
}

// The port-forward goes to the pod the Lease names; a Lease that names no
// pod, or none at all, is an error that says what to do.
func TestLeaderFromTheLease(t *testing.T) {
	lease := func(holder string) *coordinationv1.Lease {
		return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Name: "microscaling", Namespace: "microscaling-system"},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder}}
	}
	for _, tc := range []struct {
		name    string
		objects []runtime.Object
		want    string // the pod, or a part of the error
		ok      bool
	}{
		{"held by a pod", []runtime.Object{lease("microscaling-7d9f8b6c5-x2x4q")}, "microscaling-7d9f8b6c5-x2x4q", true},
		{"no Lease", nil, "--pod", false},
		{"released", []runtime.Object{lease("")}, "names no leader", false},
		{"hostname_pid", []runtime.Object{lease("laptop_4242")}, "not a pod name", false},
	} {
		got, err := leader(t.Context(), fake.NewClientset(tc.objects...), "microscaling-system", "microscaling")
		switch {
		case tc.ok && (err != nil || got != tc.want):
			t.Errorf("%s: %q, %v; want %q", tc.name, got, err, tc.want)
		case !tc.ok && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %q, %v; want an error saying %q", tc.name, got, err, tc.want)
		}
	}
}
