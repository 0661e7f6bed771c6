package secret

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/microscaling/microscaling/scaler/queue"
)

// The Reader GETs a Secret by name (never lists), keeps only the three
// keys, caches for the TTL, and says what is wrong as a class that never
// holds what the Secret does.
func TestReadsOnlyTheNamedSecret(t *testing.T) {
	mk := func(ns, name string, data map[string]string) *corev1.Secret {
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: map[string][]byte{}}
		for k, v := range data {
			s.Data[k] = []byte(v)
		}
		return s
	}
	client := fake.NewClientset(
		mk("shop", "rabbit", map[string]string{"username": "scaler", "password": "hunter2", "other": "ignored"}),
		mk("shop", "huge", map[string]string{"password": strings.Repeat("x", MaxValueBytes+1)}),
		mk("shop", "empty", map[string]string{"unrelated": "hunter2"}),
	)
	clk := clocktesting.NewFakePassiveClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	r := &Reader{Client: client, Clock: clk}
	ctx := context.Background()
	c, err := r.Credentials(ctx, "shop/rabbit")
	if err != nil || c != (queue.Credentials{Username: "scaler", Password: "hunter2"}) {
		t.Fatalf("credentials %+v, %v", c, err)
	}
	for name, want := range map[string]string{"shop/huge": "longer than 4 KiB", "shop/empty": "holds none", "other/rabbit": "does not exist"} {
		_, err := r.Credentials(ctx, name)
		if err == nil || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "xxxx") {
			t.Errorf("%s: %v, want %q and nothing of the Secret", name, err, want)
		}
	}
	for _, a := range client.Actions() {
		if a.GetVerb() != "get" {
			t.Errorf("the reader did %s %s: only get", a.GetVerb(), a.GetResource().Resource)
		}
	}
	// Within the TTL: no new GET; after it, read again.
	before := len(client.Actions())
	if _, err := r.Credentials(ctx, "shop/rabbit"); err != nil {
		t.Fatal(err)
	}
	if n := len(client.Actions()); n != before {
		t.Errorf("%d GETs within the TTL, want none", n-before)
	}
	clk.SetTime(clk.Now().Add(DefaultTTL + time.Second))
	if _, err := r.Credentials(ctx, "shop/rabbit"); err != nil {
		t.Fatal(err)
	}
	if n := len(client.Actions()); n != before+1 {
		t.Errorf("%d GETs after the TTL, want 1", n-before)
	}
}
