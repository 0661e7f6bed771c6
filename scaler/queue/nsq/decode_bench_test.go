package nsq

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

// statsOf is a /stats answer of n topics of one channel each.
func statsOf(n int) []byte {
	var b strings.Builder
	b.WriteString(`{"version":"1.3.0","health":"OK","start_time":1,"topics":[`)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `{"topic_name":"t%d","channels":[{"channel_name":"c","depth":%d,"backend_depth":0,"in_flight_count":3,"deferred_count":0,"message_count":1000,"requeue_count":0,"timeout_count":0,"client_count":2,"clients":[],"paused":false,"e2e_processing_latency":{"count":0,"percentiles":null}}],"depth":0,"backend_depth":0,"message_count":1000,"message_bytes":100000,"paused":false,"e2e_processing_latency":{"count":0,"percentiles":null}}`, i, i)
	}
	b.WriteString(`],"memory":{},"producers":[]}`)
	return []byte(b.String())
}

// BenchmarkDecodeStats: one nsqd's /stats of 2,000 topics (about 1 MB, the
// 10,000-Deployment benchmark's), every topic wanted, as each tick reads it.
func BenchmarkDecodeStats(b *testing.B) {
	body := statsOf(2000)
	want := map[string]bool{}
	for i := range 2000 {
		want[fmt.Sprintf("t%d", i)] = true
	}
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		st, err := decodeStats(json.NewDecoder(bytes.NewReader(body)), func(topic string) bool { return want[topic] })
		if err != nil || len(st.Topics) != 2000 {
			b.Fatalf("%d topics, %v", len(st.Topics), err)
		}
	}
}
