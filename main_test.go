package main

import (
	"context"
	"errors"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// The Lease is released only after the work has returned: a decision still
// in flight when the process is told to stop never overlaps another
// replica's.
func TestLeaseReleasedAfterWork(t *testing.T) {
	client := fake.NewClientset()
	lock := &resourcelock.LeaseLock{
		LeaseMeta:  metav1.ObjectMeta{Name: "microscaling", Namespace: "ms"},
		Client:     client.CoordinationV1(),
		LockConfig: resourcelock.ResourceLockConfig{Identity: "me"},
	}
	holder := func() (string, error) {
		l, err := client.CoordinationV1().Leases("ms").Get(context.Background(), "microscaling", metav1.GetOptions{})
		if err != nil {
			return "", err
		}
		if l.Spec.HolderIdentity == nil {
			return "", nil
		}
		return *l.Spec.HolderIdentity, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	started, stopping, finish := make(chan struct{}), make(chan struct{}), make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- lead(ctx, lock, "microscaling", "me", func(ctx context.Context) {
			close(started)
			<-ctx.Done()
			close(stopping)
			<-finish // a write still in flight
		})
	}()
	select {
	case <-started:
	case <-time.After(30 * time.Second):
		t.Fatal("never led")
	}
	if h, err := holder(); err != nil || h != "me" {
		t.Fatalf("leading, but the Lease's holder is %q (%v)", h, err)
	}
	cancel()
	<-stopping
	// While the work is still running, the Lease stays held.
	err := wait.PollUntilContextTimeout(context.Background(), 10*time.Millisecond, time.Second, true, func(context.Context) (bool, error) {
		h, err := holder()
		return err != nil || h != "me", err
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		h, herr := holder()
		t.Fatalf("the Lease was released (holder %q, %v) while the work was still in flight: %v", h, herr, err)
	}
	close(finish)
	if err := <-done; err != nil {
		t.Fatalf("lead: %v", err)
	}
	if h, err := holder(); err != nil || h != "" {
		t.Errorf("after the work returned: holder %q (%v), want released", h, err)
	}
}

// /healthz fails while leading when no tick finished for three intervals;
// a standby is healthy.
func TestHealthz(t *testing.T) {
	h := &health{interval: time.Second}
	now := time.Now()
	if err := h.check(now); err != nil {
		t.Errorf("standby: %v", err)
	}
	last := now
	h.lead(true, func() time.Time { return last })
	if err := h.check(now.Add(2 * time.Second)); err != nil {
		t.Errorf("2 s after a tick: %v", err)
	}
	if err := h.check(now.Add(4 * time.Second)); err == nil {
		t.Error("4 s after the last tick at a 1 s interval: healthy, want an error")
	}
	last = now.Add(4 * time.Second)
	if err := h.check(now.Add(5 * time.Second)); err != nil {
		t.Errorf("ticking again: %v", err)
	}
	h.lead(false, nil)
	if err := h.check(now.Add(time.Hour)); err != nil {
		t.Errorf("no longer leading: %v", err)
	}
}
