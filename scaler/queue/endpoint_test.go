package queue

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/microscaling/microscaling/scaler/egress"
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
	policy, err := ParsePolicy(DefaultAllow, egress.NewDenied(apiServer))
	if err != nil {
		t.Fatal(err)
	}
	f := &Fetcher{Client: NewClient(policy), Timeout: 2 * time.Second}
	tests := []struct {
		name, host, want string
	}{
		{name: "a redirect is not followed", host: strings.TrimPrefix(redirect.URL, "http://"), want: "HTTP 302"},
		{name: "cloud metadata (link-local)", host: "169.254.169.254:80", want: "not allowed"},
		{name: "IPv6 link-local", host: "[fe80::1]:4151", want: "not allowed"},
		{name: "unspecified", host: "0.0.0.0:4151", want: "not allowed"},
		{name: "the API server", host: apiServer.String(), want: "not allowed"},
		{name: "a public address outside the allow-list", host: "8.8.8.8:4151", want: "not allowed"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := read(f, tc.host)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one saying %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "secret") {
				t.Errorf("the error echoes the answer's body: %v", err)
			}
		})
	}
}

func TestAllowedQueueAddr(t *testing.T) {
	deny := egress.NewDenied(netip.MustParseAddrPort("10.0.0.1:443"))
	// With every network allowed, what is refused whatever the policy says.
	everywhere := []netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}
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
		// Cloud metadata outside link-local: AWS IPv6, Google Cloud IPv6,
		// Azure WireServer, Alibaba, Oracle legacy.
		"[fd00:ec2::254]:80":          false,
		"[fd20:ce::254]:80":           false,
		"[fd20:ce::253]:4151":         true,
		"168.63.129.16:80":            false,
		"[fd00:ec2::253]:53":          false,
		"100.100.100.200:80":          false,
		"[::ffff:100.100.100.200]:80": false,
		"192.0.0.192:80":              false,
		"100.100.100.201:4151":        true,
		"[fd00:ec3::1]:4151":          true,
	} {
		err := Policy{Nets: everywhere, Deny: deny}.check(netip.MustParseAddrPort(addr), false)
		if (err == nil) != ok {
			t.Errorf("%s: err = %v, want allowed %v", addr, err, ok)
		}
		if err != nil && !errors.Is(err, egress.ErrNotAllowed) {
			t.Errorf("%s: err = %v, want egress.ErrNotAllowed", addr, err)
		}
	}
	// A name matched by a DNS suffix (an ExternalName Service, say) reaches
	// private, CGNAT and loopback addresses, never a public one the CIDRs do
	// not allow, nor metadata, nor the API server.
	byName := Policy{Nets: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}, Suffixes: []string{"svc.cluster.local"}, Deny: deny}
	for addr, ok := range map[string]bool{
		"10.96.3.4:4151":      true,
		"192.168.1.5:4151":    true,
		"100.64.1.1:4151":     true,
		"[fd12::1]:4151":      true,
		"127.0.0.1:4151":      true,
		"8.8.8.8:4151":        false,
		"[2001:4860::1]:4151": false,
		"100.100.100.200:80":  false,
		"[fd00:ec2::254]:80":  false,
		"[fd20:ce::254]:80":   false,
		"10.0.0.1:443":        false,
		"169.254.169.254:80":  false,
	} {
		err := byName.check(netip.MustParseAddrPort(addr), true)
		if (err == nil) != ok {
			t.Errorf("by name %s: err = %v, want allowed %v", addr, err, ok)
		}
	}
}

// The operator's allow-list: CIDRs on the resolved address, DNS suffixes on
// the name; an address it does not allow is never dialed.
func TestQueueAllowList(t *testing.T) {
	hits := 0
	nsqd := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		hits++
		_, _ = w.Write([]byte(`{}`))
	}))
	defer nsqd.Close()
	port := nsqd.URL[strings.LastIndex(nsqd.URL, ":")+1:]
	for _, tc := range []struct {
		name, allow, host, wantErr string
		wantHits                   int
	}{
		{name: "loopback allowed by CIDR", allow: "127.0.0.0/8", host: "127.0.0.1:" + port, wantHits: 1},
		{name: "loopback not in the list: never dialed", allow: "10.0.0.0/8", host: "127.0.0.1:" + port, wantErr: "not allowed"},
		{name: "a name allowed by its DNS suffix", allow: "10.0.0.0/8,localhost", host: "localhost:" + port, wantHits: 1},
		{name: "a name no suffix matches", allow: "10.0.0.0/8,.svc.cluster.local", host: "localhost:" + port, wantErr: "not allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			hits = 0
			p, err := ParsePolicy(tc.allow, nil)
			if err != nil {
				t.Fatal(err)
			}
			err = read(&Fetcher{Client: NewClient(p), Timeout: 2 * time.Second}, tc.host)
			if (tc.wantErr == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("err = %v, want %q", err, tc.wantErr)
			}
			if hits != tc.wantHits {
				t.Errorf("the server saw %d requests, want %d", hits, tc.wantHits)
			}
		})
	}
	for _, bad := range []string{"10.0.0.0/33", "not a name!", "-bad.example"} {
		if _, err := ParsePolicy(bad, nil); err == nil || !strings.Contains(err.Error(), "queue allow-list entry") {
			t.Errorf("ParsePolicy(%q) = %v, want an error naming the entry", bad, err)
		}
	}
}

// read GETs an empty JSON object from host as a source would, and gives
// the error a tenant would see.
func read(f *Fetcher, host string) error {
	err := f.GetJSON(context.Background(), []string{"ns"}, host, "http://"+host+"/", nil, func(dec *json.Decoder) error {
		var v struct{}
		return dec.Decode(&v)
	})
	if err != nil {
		return Classify("server", host, err)
	}
	return nil
}
