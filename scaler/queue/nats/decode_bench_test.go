package nats

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// jszOf is a /jsz?consumers=true answer of n streams of one consumer each,
// laid out as nats-server 2.9 sends it (indented).
func jszOf(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"server_id":"NCC5","now":"2026-12-06T02:07:16Z","config":{"max_memory":1,"max_storage":1,"store_dir":"/js"},"memory":0,"storage":0,"api":{"total":1,"errors":0},"streams":1,"consumers":1,"account_details":[{"name":"$G","id":"$G","memory":0,"storage":0,"api":{"total":1,"errors":0},"stream_detail":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"name":"s%d","created":"2026-12-06T02:07:16.033141736Z","cluster":{"leader":"NCC5JTHCHMKY5JK77MTENEXPJO37XFJPPFEUU6CKV3PRNHMOX32ATOAP"},"state":{"messages":%d,"bytes":0,"first_seq":0,"first_ts":"0001-01-01T00:00:00Z","last_seq":0,"last_ts":"0001-01-01T00:00:00Z","consumer_count":1},"consumer_detail":[{"stream_name":"s%d","name":"c%d","created":"2026-12-06T02:07:16.034545639Z","delivered":{"consumer_seq":%d,"stream_seq":0},"ack_floor":{"consumer_seq":0,"stream_seq":0},"num_ack_pending":3,"num_redelivered":0,"num_waiting":0,"num_pending":%d}]}`, i, i, i, i, i, i)
	}
	b.WriteString(`]}]}`)
	var out bytes.Buffer
	if err := json.Indent(&out, []byte(b.String()), "", "  "); err != nil {
		panic(err)
	}
	return out.Bytes()
}

// BenchmarkDecode: one server's /jsz of 400 streams (about 400 kB, the
// 10,000-Deployment benchmark's fifth), every consumer wanted, as each
// tick reads it.
func BenchmarkDecode(b *testing.B) {
	body := jszOf(400)
	want := map[streamConsumer]bool{}
	for i := range 400 {
		want[streamConsumer{fmt.Sprintf("s%d", i), fmt.Sprintf("c%d", i)}] = true
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		got, err := decode(json.NewDecoder(bytes.NewReader(body)), want)
		if err != nil || len(got) != 400 {
			b.Fatalf("%d consumers, %v", len(got), err)
		}
	}
}
