package nats

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	natsgo "github.com/nats-io/nats.go"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/policy"
	"github.com/microscaling/microscaling/scaler/queue"
	"github.com/microscaling/microscaling/test/harness"
)

// A real nats-server with JetStream: a pull consumer's pending, ack
// pending and deliveries as a real client fetches and acknowledges.
func TestReadsJetStreamConsumers(t *testing.T) {
	srv := harness.StartNATS(t)
	nc, err := natsgo.Connect("nats://" + srv.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.AddStream(&natsgo.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.AddConsumer("ORDERS", &natsgo.ConsumerConfig{Durable: "worker", AckPolicy: natsgo.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	for range 10 {
		if _, err := js.Publish("orders.new", []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	sub, err := js.PullSubscribe("orders.>", "worker", natsgo.Bind("ORDERS", "worker"))
	if err != nil {
		t.Fatal(err)
	}
	msgs, err := sub.Fetch(4)
	if err != nil {
		t.Fatal(err)
	}
	if err := msgs[0].AckSync(); err != nil {
		t.Fatal(err)
	}

	r := &Reader{Fetcher: &queue.Fetcher{Timeout: 2 * time.Second}}
	worker := annotations.QueueRef{Scheme: annotations.SchemeNATS, Host: srv.HTTPAddr, Name: "ORDERS", Sub: "worker"}
	other := annotations.QueueRef{Scheme: annotations.SchemeNATS, Host: srv.HTTPAddr, Name: "ORDERS", Sub: "nobody"}
	snap := r.Read(t.Context(), []queue.Ref{{QueueRef: worker}, {QueueRef: other}})
	got, err := snap.Reading(worker)
	if err != nil {
		t.Fatal(err)
	}
	got.At = time.Time{}
	// 10 published, 4 delivered, 1 acknowledged: 6 waiting, 3 in flight.
	if want := (policy.QueueReading{Backlog: 9, Waiting: 6, Arrived: 10}); got != want {
		t.Errorf("reading %+v, want %+v", got, want)
	}
	if _, err := snap.Reading(other); err == nil || !strings.Contains(err.Error(), "no such JetStream") {
		t.Errorf("an unknown consumer: %v, want no such JetStream stream and consumer", err)
	}
	// Bounded: a 1 KiB bound is below this answer.
	small := &Reader{Fetcher: &queue.Fetcher{Timeout: 2 * time.Second, MaxBytes: 1024}}
	if _, err := small.Read(t.Context(), []queue.Ref{{QueueRef: worker}}).Reading(worker); err == nil || !strings.Contains(err.Error(), "answer too large") {
		t.Errorf("with a 1 KiB bound: %v, want answer too large", err)
	}
}

// The answer's shapes a single-account server does not show: two accounts
// naming the same stream and consumer (the first account's is read), a
// stream with no consumers (null or absent), streams not asked for, and
// answers that are not /jsz.
func TestDecodeShapes(t *testing.T) {
	want := map[streamConsumer]bool{{"S", "c"}: true, {"T", "d"}: true}
	body := `{"server_id":"x","config":{"a":[1,{"b":2}]},"account_details":[
		{"name":"A","stream_detail":[
			{"name":"S","state":{"messages":5},"consumer_detail":[{"name":"c","num_pending":5,"num_ack_pending":1,"delivered":{"consumer_seq":7}},{"name":"other","num_pending":9}]},
			{"name":"U","consumer_detail":null},
			{"name":"V"}]},
		{"name":"B","stream_detail":[
			{"consumer_detail":[{"name":"d","num_pending":2}],"name":"T"},
			{"name":"S","consumer_detail":[{"name":"c","num_pending":99}]}]}]}`
	got, err := decode(json.NewDecoder(strings.NewReader(body)), want)
	if err != nil {
		t.Fatal(err)
	}
	if c := got[streamConsumer{"S", "c"}]; c.Pending != 5 || c.AckPending != 1 || c.Delivered.ConsumerSeq != 7 {
		t.Errorf("S/c read as %+v, want the first account's (5 pending, 1 ack pending, 7 delivered)", c)
	}
	if c, ok := got[streamConsumer{"T", "d"}]; !ok || c.Pending != 2 {
		t.Errorf("T/d (its stream's name after its consumers) read as %+v, %v", c, ok)
	}
	if len(got) != 2 {
		t.Errorf("kept %d consumers, want the 2 asked for: %+v", len(got), got)
	}
	for _, bad := range []string{`[]`, `{"account_details":{}}`, `{"account_details":[{"stream_detail":[{"consumer_detail":[{"name":1}]}]}]}`, `{"account_details":[`} {
		if _, err := decode(json.NewDecoder(strings.NewReader(bad)), want); err == nil {
			t.Errorf("%s decoded without an error", bad)
		}
	}
}
