package redis

import (
	"context"
	"strings"
	"testing"
	"time"

	goredis "github.com/redis/go-redis/v9"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/policy"
	"github.com/microscaling/microscaling/scaler/queue"
	"github.com/microscaling/microscaling/test/harness"
)

func ref(host, key, group string) annotations.QueueRef {
	return annotations.QueueRef{Scheme: annotations.SchemeRedis, Host: host, Name: key, Sub: group}
}

func reader(t *testing.T, allow string, maxBytes int64) *Reader {
	t.Helper()
	p, err := queue.ParsePolicy(allow, nil)
	if err != nil {
		t.Fatal(err)
	}
	return &Reader{Fetcher: &queue.Fetcher{Timeout: 2 * time.Second, MaxBytes: maxBytes}, Dial: p.DialContext()}
}

// A real redis-server: a list's length, and a stream group's lag, pending
// entries and arrivals as consumers read and acknowledge.
func TestReadsListsAndStreamGroups(t *testing.T) {
	srv := harness.StartRedis(t)
	ctx := t.Context()
	c := goredis.NewClient(&goredis.Options{Addr: srv.Addr})
	defer c.Close()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(c.RPush(ctx, "jobs", 1, 2, 3, 4, 5).Err())
	must(c.XGroupCreateMkStream(ctx, "events", "workers", "0").Err())
	for i := range 10 {
		must(c.XAdd(ctx, &goredis.XAddArgs{Stream: "events", Values: map[string]any{"n": i}}).Err())
	}
	got, err := c.XReadGroup(ctx, &goredis.XReadGroupArgs{Group: "workers", Consumer: "w1", Streams: []string{"events", ">"}, Count: 4}).Result()
	must(err)
	must(c.XAck(ctx, "events", "workers", got[0].Messages[0].ID).Err())
	must(c.Set(ctx, "plain", "x", 0).Err())

	list, stream := ref(srv.Addr, "jobs", ""), ref(srv.Addr, "events", "workers")
	missing, noGroup, wrong := ref(srv.Addr, "nothing", "workers"), ref(srv.Addr, "events", "other"), ref(srv.Addr, "plain", "")
	snap := reader(t, queue.DefaultAllow, 0).Read(ctx, []queue.Ref{{QueueRef: list}, {QueueRef: stream}, {QueueRef: missing}, {QueueRef: noGroup}, {QueueRef: wrong}})
	check := func(q annotations.QueueRef, want policy.QueueReading) {
		t.Helper()
		r, err := snap.Reading(q)
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		r.At = time.Time{}
		if r != want {
			t.Errorf("%s: %+v, want %+v", q, r, want)
		}
	}
	check(list, policy.QueueReading{Backlog: 5, Waiting: 5, NoArrivals: true})
	// 10 added, 4 delivered of which 1 acknowledged: 6 waiting, 3 in flight.
	check(stream, policy.QueueReading{Backlog: 9, Waiting: 6, Arrived: 10})
	check(missing, policy.QueueReading{})
	for q, want := range map[annotations.QueueRef]string{noGroup: "no such consumer group", wrong: "another type"} {
		if _, err := snap.Reading(q); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want an error saying %q", q, err, want)
		}
	}
}

// An answer past the bound fails the server's queues as too large, a
// server the endpoint policy does not allow is never dialled, and one that
// is down fails as refused.
func TestBoundsAndFailures(t *testing.T) {
	srv := harness.StartRedis(t)
	ctx := t.Context()
	c := goredis.NewClient(&goredis.Options{Addr: srv.Addr})
	defer c.Close()
	for i := range 200 {
		if err := c.XGroupCreateMkStream(ctx, "events", strings.Repeat("g", 200)+string(rune('a'+i%26))+strings.Repeat("x", i), "0").Err(); err != nil {
			t.Fatal(err)
		}
	}
	q := ref(srv.Addr, "events", "workers")
	if _, err := reader(t, queue.DefaultAllow, 4096).Read(ctx, []queue.Ref{{QueueRef: q}}).Reading(q); err == nil || !strings.Contains(err.Error(), "answer too large") {
		t.Errorf("a 200-group answer read with a 4 KiB bound: %v, want answer too large", err)
	}
	if _, err := reader(t, "10.0.0.0/8", 0).Read(ctx, []queue.Ref{{QueueRef: q}}).Reading(q); err == nil || !strings.Contains(err.Error(), "not allowed") {
		t.Errorf("a server the endpoint policy does not allow: %v, want not allowed", err)
	}
	srv.Stop()
	if _, err := reader(t, queue.DefaultAllow, 0).Read(context.Background(), []queue.Ref{{QueueRef: q}}).Reading(q); err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("a stopped server: %v, want connection refused", err)
	}
}

// A server behind a password: a wrong one, or none, is told as refused for
// a list and for a stream's group alike (a refused connection runs no
// command: the group must not read as missing), and the password is never
// in the error; the right one reads.
func TestPasswordsRefusedAsSuch(t *testing.T) {
	srv := harness.StartRedis(t, "--requirepass", "s3cret-pass")
	ctx := t.Context()
	c := goredis.NewClient(&goredis.Options{Addr: srv.Addr, Password: "s3cret-pass"})
	defer c.Close()
	if err := c.XGroupCreateMkStream(ctx, "events", "workers", "0").Err(); err != nil {
		t.Fatal(err)
	}
	r := reader(t, queue.DefaultAllow, 0)
	r.Fetcher.Credentials = queue.Fixed{"shop/right": {Password: "s3cret-pass"}, "shop/wrong": {Password: "not-the-pass"}}
	for _, secret := range []string{"shop/wrong", ""} {
		list, stream := ref(srv.Addr, "jobs", ""), ref(srv.Addr, "events", "workers")
		list.Secret, stream.Secret = secret, secret
		snap := r.Read(ctx, []queue.Ref{{QueueRef: list}, {QueueRef: stream}})
		for _, q := range []annotations.QueueRef{list, stream} {
			if _, err := snap.Reading(q); err == nil || !strings.Contains(err.Error(), "authentication required or refused") || strings.Contains(err.Error(), "pass") {
				t.Errorf("%s with Secret %q: %v, want authentication refused and no password", q, secret, err)
			}
		}
	}
	stream := ref(srv.Addr, "events", "workers")
	stream.Secret = "shop/right"
	if _, err := r.Read(ctx, []queue.Ref{{QueueRef: stream}}).Reading(stream); err != nil {
		t.Errorf("the right password: %v", err)
	}
}
