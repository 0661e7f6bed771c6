package nsq

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/microscaling/microscaling/annotations"
)

// Queue addresses come from tenants: the reader's client must not be a way
// to reach anything else, nor to read anything back.
func TestQueueClientRefuses(t *testing.T) {
	secret := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "the secret body", http.StatusForbidden)
	}))
	defer secret.Close()
	redirect := httptest.NewServer(http.RedirectHandler(secret.URL+"/stats", http.StatusFound))
	defer redirect.Close()
	apiServer := netip.MustParseAddrPort(strings.TrimPrefix(secret.URL, "http://"))
	r := &NSQReader{Client: NewQueueClient(apiServer), Timeout: 2 * time.Second}
	tests := []struct {
		name, host, want string
	}{
		{name: "a redirect is not followed", host: strings.TrimPrefix(redirect.URL, "http://"), want: "HTTP 302"},
		{name: "cloud metadata (link-local)", host: "169.254.169.254:80", want: "not allowed"},
		{name: "IPv6 link-local", host: "[fe80::1]:4151", want: "not allowed"},
		{name: "unspecified", host: "0.0.0.0:4151", want: "not allowed"},
		{name: "the API server", host: apiServer.String(), want: "not allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ref := annotations.QueueRef{Scheme: "nsq", Host: tc.host, Topic: "t", Channel: "c"}
			_, err := r.Read(context.Background(), []annotations.QueueRef{ref}).Reading(ref)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one saying %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("the error echoes the answer's body: %v", err)
			}
		})
	}
}

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
			r := &NSQReader{Timeout: 2 * time.Second}
			_, err := r.lookup(context.Background(), strings.TrimPrefix(srv.URL, "http://"), "t")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one saying %q", err, tc.want)
			}
		})
	}
}

func TestAllowedQueueAddr(t *testing.T) {
	deny := []netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:443")}
	for addr, ok := range map[string]bool{
		"127.0.0.1:4151":         true,
		"10.0.0.1:4151":          true, // the API server's host, another port
		"10.0.0.1:443":           false,
		"[::ffff:10.0.0.1]:443":  false, // the same, IPv4-mapped
		"169.254.169.254:80":     false,
		"[fe80::1]:80":           false,
		"224.0.0.1:4151":         false,
		"[::]:4151":              false,
		"[2001:db8::1]:4151":     true,
		"[::ffff:169.254.1.1]:1": false,
	} {
		err := allowedQueueAddr(netip.MustParseAddrPort(addr), deny)
		if (err == nil) != ok {
			t.Errorf("%s: err = %v, want allowed %v", addr, err, ok)
		}
		if err != nil && !errors.Is(err, errNotAllowed) {
			t.Errorf("%s: err = %v, want errNotAllowed", addr, err)
		}
	}
}
