package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/test/harness"
)

// hostileValues are tried on every key; the corpus keeps each pair the
// parser rejects for that key.
var hostileValues = []string{
	"", "abc", "-1", "0", "99999999999999999999", "2147483648", "1.5", "1e3", "0x10", " 5", "５",
	"true!", "TRUE", "nsq://", "nsq://h:0/t/c", "nsq://h:99999/t/c", "nsq://h:1/t/c/d", "http://h:1/t/c",
	"-5s", "25h", "1 s", "queue,remainder", "\x00", "ⓡⓔⓜⓐⓘⓝⓓⓔⓡ", strings.Repeat("9", 3000),
}

// TestHostileAnnotations: every invalid value of every key gets a Warning
// Event naming that key and leaves its Deployment untouched.
func TestHostileAnnotations(t *testing.T) {
	s := harness.StartT(t, harness.Options{NSQ: true, Nodes: bigNodes})
	q := "nsq://" + s.NSQ.HTTPAddr + "/jobs/work"
	type tc struct{ name, key, value string }
	var corpus []tc
	for _, key := range annotations.Keys {
		for i, v := range hostileValues {
			ann := map[string]string{annotations.Queue: q, annotations.TargetQueueLength: "5", annotations.MaxReplicas: "5", key: v}
			_, err := annotations.Parse("x", ann)
			named := false
			for _, fe := range annotations.FieldErrors(err) {
				named = named || fe.Key == key
			}
			if named {
				corpus = append(corpus, tc{fmt.Sprintf("%s-%d", strings.TrimPrefix(key, annotations.Prefix), i), key, v})
			}
		}
	}
	if len(corpus) < 100 {
		t.Fatalf("corpus has %d cases, expected over 100", len(corpus))
	}
	for _, c := range corpus {
		create(t, s, deployment("default", c.name, 2, map[string]string{annotations.Queue: q,
			annotations.TargetQueueLength: "5", annotations.MaxReplicas: "5", c.key: c.value}))
	}
	startController(t, s.Kubeconfig)
	eventually(t, 60*time.Second, func(ctx context.Context) error {
		missing := 0
		var first string
		for _, c := range corpus {
			evs, err := events(ctx, s, "default", c.name)
			if err != nil {
				return err
			}
			found := false
			for _, e := range evs {
				found = found || strings.HasPrefix(e, "Warning InvalidAnnotation: "+c.key+"=")
			}
			if !found {
				missing++
				if first == "" {
					first = fmt.Sprintf("%s (%s=%q): %q", c.name, c.key, c.value, evs)
				}
			}
		}
		if missing > 0 {
			return fmt.Errorf("%d of %d cases have no Warning naming their key, e.g. %s", missing, len(corpus), first)
		}
		return nil
	})
	list, err := s.Client.AppsV1().Deployments("default").List(t.Context(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range list.Items {
		if *d.Spec.Replicas != 2 || d.Generation != 1 {
			t.Errorf("%s was changed: replicas %d, generation %d", d.Name, *d.Spec.Replicas, d.Generation)
		}
	}
	t.Logf("%d hostile cases, each reported and untouched", len(corpus))
}
