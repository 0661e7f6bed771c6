package nsq

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/microscaling/microscaling/scaler/queue"
)

func TestLookupProducersAreChecked(t *testing.T) {
	tests := []struct {
		name, body, want string
	}{
		{name: "a path smuggled in the broadcast address", body: `{"producers":[{"broadcast_address":"127.0.0.1/admin?x=","http_port":4151}]}`, want: "invalid nsqd address"},
		{name: "credentials in the broadcast address", body: `{"producers":[{"broadcast_address":"user@127.0.0.1","http_port":4151}]}`, want: "invalid nsqd address"},
		{name: "a port out of range", body: `{"producers":[{"broadcast_address":"127.0.0.1","http_port":70000}]}`, want: "port out of range"},
		{name: "too many nsqds", body: `{"producers":[` + strings.Repeat(`{"broadcast_address":"127.0.0.1","http_port":4151},`, 64) + `{"broadcast_address":"127.0.0.1","http_port":4151}]}`, want: "more than 64"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte(tc.body)) }))
			defer srv.Close()
			r := &NSQReader{Fetcher: &queue.Fetcher{Timeout: 2 * time.Second}}
			_, err := r.lookup(context.Background(), nil, strings.TrimPrefix(srv.URL, "http://"), "t")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one saying %q", err, tc.want)
			}
		})
	}
}
