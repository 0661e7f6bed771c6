package rabbitmq

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	clocktesting "k8s.io/utils/clock/testing"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/policy"
	"github.com/microscaling/microscaling/scaler/queue"
	"github.com/microscaling/microscaling/test/harness"
)

var guest = queue.Fixed{"shop/rabbit": {Username: "guest", Password: "guest"}, "shop/wrong": {Username: "guest", Password: "wrong"}}

// A real rabbitmq-server with the management plugin: messages ready,
// unacknowledged, published and consumers as a real AMQP client publishes,
// takes and acknowledges; wrong credentials and unknown queues fail by
// class.
func TestReadsQueuesThroughTheManagementAPI(t *testing.T) {
	srv := harness.StartRabbitMQ(t)
	conn, err := amqp.Dial("amqp://guest:guest@" + srv.Addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare("orders", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if err := ch.PublishWithContext(t.Context(), "", "orders", false, false, amqp.Publishing{Body: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ch.Qos(4, 0, false); err != nil {
		t.Fatal(err)
	}
	deliveries, err := ch.Consume("orders", "worker", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	var tags []uint64
	for range 4 {
		tags = append(tags, (<-deliveries).DeliveryTag)
	}
	if err := ch.Ack(tags[0], false); err != nil {
		t.Fatal(err)
	}

	r := NewReader(&queue.Fetcher{Timeout: 2 * time.Second, Credentials: guest})
	orders := annotations.QueueRef{Scheme: annotations.SchemeRabbitMQ, Host: srv.HTTPAddr, Name: "orders", Sub: "/", Secret: "shop/rabbit"}
	// 10 published, 1 acknowledged, and the consumer holds its prefetch of
	// 4 (the broker sent a fifth once one was acknowledged): 5 ready, 4
	// unacknowledged, one consumer; the management API shows it within its
	// statistics interval.
	want := policy.QueueReading{Backlog: 9, Waiting: 5, Arrived: 10, Completed: 1, CompletedKnown: true, Consumers: 1}
	var got policy.QueueReading
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	for {
		got, err = r.Read(t.Context(), []queue.Ref{{QueueRef: orders}}).Reading(orders)
		if err != nil && !strings.Contains(err.Error(), "no statistics") {
			t.Fatal(err)
		}
		got.At, got.Earliest = time.Time{}, time.Time{}
		if got == want {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("reading %+v, want %+v", got, want)
		case <-time.After(500 * time.Millisecond):
		}
	}
	if got != want {
		t.Fatalf("reading %+v, want %+v", got, want)
	}

	// One GET covers the virtual host: a queue it does not hold fails on
	// its own, beside one it does; an unknown virtual host is a 404.
	unknown := annotations.QueueRef{Scheme: annotations.SchemeRabbitMQ, Host: srv.HTTPAddr, Name: "nothing", Sub: "/", Secret: "shop/rabbit"}
	both := r.Read(t.Context(), []queue.Ref{{QueueRef: unknown}, {QueueRef: orders}})
	if _, err := both.Reading(unknown); err == nil || !strings.Contains(err.Error(), "no such queue") {
		t.Errorf("an unknown queue: %v, want no such queue", err)
	}
	if _, err := both.Reading(orders); err != nil {
		t.Errorf("a known queue beside an unknown one: %v", err)
	}
	novhost := orders
	novhost.Sub = "nowhere"
	if _, err := r.Read(t.Context(), []queue.Ref{{QueueRef: novhost}}).Reading(novhost); err == nil || !strings.Contains(err.Error(), "HTTP 404") {
		t.Errorf("an unknown virtual host: %v, want HTTP 404", err)
	}
	// The same queue read with another Secret is a read of its own.
	wrong := orders
	wrong.Secret = "shop/wrong"
	snap := r.Read(t.Context(), []queue.Ref{{QueueRef: orders}, {QueueRef: wrong}})
	if _, err := snap.Reading(wrong); err == nil || !strings.Contains(err.Error(), "HTTP 401") || strings.Contains(err.Error(), "wrong") {
		t.Errorf("a wrong password: %v, want HTTP 401 and no credentials", err)
	}
	if _, err := snap.Reading(orders); err != nil {
		t.Errorf("the right password beside it: %v", err)
	}
	// No Secret named: no credentials, refused; a Secret named with Secret
	// reading off: the member is told why.
	anonymous := orders
	anonymous.Secret = ""
	if _, err := r.Read(t.Context(), []queue.Ref{{QueueRef: anonymous}}).Reading(anonymous); err == nil || !strings.Contains(err.Error(), "HTTP 401") {
		t.Errorf("without credentials: %v, want HTTP 401", err)
	}
	off := NewReader(&queue.Fetcher{Timeout: 2 * time.Second})
	if _, err := off.Read(t.Context(), []queue.Ref{{QueueRef: orders}}).Reading(orders); err == nil || !strings.Contains(err.Error(), "--queue-secrets") {
		t.Errorf("with Secret reading off: %v, want it named", err)
	}
}

// The management API refreshes the queue's counts, the publishers' and the
// consumers' counters each on its own timer. While consumers are
// connected, a reading is dated by their count of acknowledgements, the
// figure the service rate is measured from: counts that changed on another
// timer keep the time, a new count is dated now and may be as old as the
// read before. Without consumers any change dates it.
func TestFiguresAreDatedByTheConsumersCount(t *testing.T) {
	body := `[{"name":"other","messages_ready":9},{"name":"orders","messages_ready":5,"messages_unacknowledged":1,"consumers":2,"message_stats":{"publish":40,"ack":30}}]`
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.EscapedPath() != "/api/queues/%2F" || r.URL.Query().Get("columns") != columns {
			http.Error(w, "unexpected request", http.StatusBadRequest)
			return
		}
		_, _ = w.Write([]byte(body))
	}))
	defer srv.Close()
	q := annotations.QueueRef{Scheme: annotations.SchemeRabbitMQ, Host: strings.TrimPrefix(srv.URL, "http://"), Name: "orders", Sub: "/"}
	clk := clocktesting.NewFakePassiveClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	r := NewReader(&queue.Fetcher{Timeout: 2 * time.Second, Clock: clk})
	read := func() policy.QueueReading {
		t.Helper()
		got, err := r.Read(t.Context(), []queue.Ref{{QueueRef: q}}).Reading(q)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	first := read()
	if first.Completed != 30 || !first.CompletedKnown {
		t.Errorf("first reading %+v, want 30 completed", first)
	}
	clk.SetTime(clk.Now().Add(2 * time.Second))
	// The queue's counts and the publishers' counter moved; the consumers'
	// count not yet.
	body = `[{"name":"orders","messages_ready":7,"messages_unacknowledged":1,"consumers":2,"message_stats":{"publish":45,"ack":30}}]`
	if again := read(); !again.At.Equal(first.At) || again.Arrived != 45 {
		t.Errorf("new counts, the same acknowledgements: %+v, want 45 arrived dated %v", again, first.At)
	}
	clk.SetTime(clk.Now().Add(2 * time.Second))
	before := clk.Now()
	read() // still the same acknowledgements
	clk.SetTime(clk.Now().Add(time.Second))
	body = `[{"name":"orders","messages_ready":7,"messages_unacknowledged":1,"consumers":2,"message_stats":{"publish":45,"ack":33,"deliver_no_ack":2}}]`
	next := read()
	if !next.At.Equal(clk.Now()) || !next.Earliest.Equal(before) || next.Completed != 35 {
		t.Errorf("new acknowledgements %+v, want 35 completed at %v, as early as %v", next, clk.Now(), before)
	}
	// No consumer: nothing is acknowledged, and any change dates the
	// reading (arrivals still count).
	clk.SetTime(clk.Now().Add(time.Second))
	body = `[{"name":"orders","messages_ready":9,"messages_unacknowledged":0,"consumers":0,"message_stats":{"publish":47,"ack":33,"deliver_no_ack":2}}]`
	if idle := read(); !idle.At.Equal(clk.Now()) || idle.Arrived != 47 {
		t.Errorf("no consumer, new counts: %+v, want dated now (%v)", idle, clk.Now())
	}
	// Counters past what int64 holds together are not counts.
	body = `[{"name":"orders","messages_ready":1,"messages_unacknowledged":0,"consumers":1,"message_stats":{"ack":9223372036854775807,"deliver_no_ack":1}}]`
	if _, err := r.Read(t.Context(), []queue.Ref{{QueueRef: q}}).Reading(q); err == nil || !strings.Contains(err.Error(), "malformed") {
		t.Errorf("counters that overflow: %v, want malformed", err)
	}
	body = `[{"name":"orders","messages_ready":7,"messages_unacknowledged":1,"consumers":2,"message_stats":{"publish":45,"ack":33,"deliver_no_ack":2}}]`
	read()
	// Unchanged for longer than three statistics intervals: a queue at
	// rest, read as of now, or the last rate would be believed forever.
	clk.SetTime(clk.Now().Add(16 * time.Second))
	if rest := read(); !rest.At.Equal(clk.Now()) {
		t.Errorf("figures unchanged for 16 s read at %v, want now (%v)", rest.At, clk.Now())
	}
	// A queue just declared has no counts yet: not read as empty.
	body = `[{"name":"orders"}]`
	if _, err := r.Read(t.Context(), []queue.Ref{{QueueRef: q}}).Reading(q); err == nil || !strings.Contains(err.Error(), "no statistics") {
		t.Errorf("an answer without counts: %v, want no statistics yet", err)
	}
	// Not a list of queues: malformed, never read as empty.
	body = `{"error":"Object Not Found"}`
	if _, err := r.Read(t.Context(), []queue.Ref{{QueueRef: q}}).Reading(q); err == nil || !strings.Contains(err.Error(), "malformed") {
		t.Errorf("an answer that is not a list: %v, want malformed", err)
	}
}
