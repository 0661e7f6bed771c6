package harness

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"
)

// NSQ is a running nsqlookupd and one nsqd registered with it.
type NSQ struct {
	// HTTPAddr and TCPAddr are the nsqd's addresses (host:port).
	HTTPAddr string
	TCPAddr  string
	// LookupdHTTPAddr is nsqlookupd's HTTP address.
	LookupdHTTPAddr string

	nsqd       *process
	lookupd    *process
	lookupdTCP string
	bin, dir   string
}

func startNSQ(ctx context.Context, bin, dir string) (*NSQ, error) {
	ports, err := freePorts(4)
	if err != nil {
		return nil, err
	}
	n := &NSQ{HTTPAddr: addr(ports[0]), TCPAddr: addr(ports[1]), LookupdHTTPAddr: addr(ports[2])}
	lookupdTCP := addr(ports[3])
	n.lookupdTCP, n.bin, n.dir = lookupdTCP, bin, dir
	data := filepath.Join(dir, "nsqd")
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, fmt.Errorf("making nsqd data dir: %w", err)
	}
	n.lookupd = &process{
		name: "nsqlookupd", bin: filepath.Join(bin, "nsqlookupd"), log: filepath.Join(dir, "nsqlookupd.log"),
		args: []string{"--http-address=" + n.LookupdHTTPAddr, "--tcp-address=" + lookupdTCP, "--broadcast-address=127.0.0.1"},
	}
	n.nsqd = &process{
		name: "nsqd", bin: filepath.Join(bin, "nsqd"), log: filepath.Join(dir, "nsqd.log"),
		args: []string{
			"--http-address=" + n.HTTPAddr, "--tcp-address=" + n.TCPAddr, "--broadcast-address=127.0.0.1",
			"--data-path=" + data, "--lookupd-tcp-address=" + lookupdTCP, "--log-level=warn",
		},
	}
	if err := n.lookupd.start(); err != nil {
		return n, err
	}
	if err := waitHTTP(ctx, n.lookupd, http.DefaultClient, "http://"+n.LookupdHTTPAddr+"/ping"); err != nil {
		return n, err
	}
	return n, n.Start(ctx)
}

// Start starts nsqd (again, after Stop) with the same ports and data.
func (n *NSQ) Start(ctx context.Context) error {
	if err := n.nsqd.start(); err != nil {
		return err
	}
	return waitHTTP(ctx, n.nsqd, http.DefaultClient, "http://"+n.HTTPAddr+"/ping")
}

// StartPhantom starts a second nsqd that registers topic with the
// nsqlookupd under an address where nothing answers (127.0.0.9: it listens
// on 127.0.0.1 only), as a tenant's misconfigured or vanished nsqd would.
// stop ends it, and its registration with it.
func (n *NSQ) StartPhantom(ctx context.Context, topic string) (stop func(), err error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	data := filepath.Join(n.dir, "phantom-"+topic)
	if err := os.MkdirAll(data, 0o700); err != nil {
		return nil, fmt.Errorf("making the phantom nsqd's data dir: %w", err)
	}
	p := &process{
		name: "nsqd (phantom)", bin: filepath.Join(n.bin, "nsqd"), log: filepath.Join(n.dir, "phantom-"+topic+".log"),
		args: []string{
			"--http-address=" + addr(ports[0]), "--tcp-address=" + addr(ports[1]), "--broadcast-address=127.0.0.9",
			"--data-path=" + data, "--lookupd-tcp-address=" + n.lookupdTCP, "--log-level=warn",
		},
	}
	if err := p.start(); err != nil {
		return nil, err
	}
	stop = func() { p.stop(15 * time.Second) }
	if err := waitHTTP(ctx, p, http.DefaultClient, "http://"+addr(ports[0])+"/ping"); err != nil {
		stop()
		return nil, err
	}
	phantom := &NSQ{HTTPAddr: addr(ports[0])}
	if err := phantom.post(ctx, "/topic/create?topic="+url.QueryEscape(topic)); err != nil {
		stop()
		return nil, err
	}
	return stop, nil
}

// Stop stops nsqd and waits until it has exited, so its ports are free.
func (n *NSQ) Stop() { n.nsqd.stop(15 * time.Second) }

// CreateChannel creates a topic and a channel on nsqd, so that messages
// published before any consumer connects wait in the channel.
func (n *NSQ) CreateChannel(ctx context.Context, topic, channel string) error {
	return n.post(ctx, "/topic/create?topic="+url.QueryEscape(topic), "/channel/create?topic="+url.QueryEscape(topic)+"&channel="+url.QueryEscape(channel))
}

// EmptyChannel drops every message waiting on a channel.
func (n *NSQ) EmptyChannel(ctx context.Context, topic, channel string) error {
	return n.post(ctx, "/channel/empty?topic="+url.QueryEscape(topic)+"&channel="+url.QueryEscape(channel))
}

// post POSTs each path to nsqd in turn; any answer but 200 is an error.
func (n *NSQ) post(ctx context.Context, paths ...string) error {
	for _, path := range paths {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+n.HTTPAddr+path, nil)
		if err != nil {
			return err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return fmt.Errorf("POST %s: %w", path, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("POST %s: %s", path, resp.Status)
		}
	}
	return nil
}

// Backlog is a channel's messages on nsqd: ready, in flight and deferred.
func (n *NSQ) Backlog(ctx context.Context, topic, channel string) (int64, error) {
	ch, err := n.channel(ctx, topic, channel)
	return ch.Depth + ch.InFlight + ch.Deferred, err
}

// Redelivered is how many of a channel's messages nsqd has had to deliver
// again: requeued by a consumer or timed out in flight.
func (n *NSQ) Redelivered(ctx context.Context, topic, channel string) (int64, error) {
	ch, err := n.channel(ctx, topic, channel)
	return ch.Requeued + ch.TimedOut, err
}

// Clients is how many consumers a channel has connected.
func (n *NSQ) Clients(ctx context.Context, topic, channel string) (int, error) {
	ch, err := n.channel(ctx, topic, channel)
	return ch.Clients, err
}

type channelStats struct {
	Name     string `json:"channel_name"`
	Depth    int64  `json:"depth"`
	InFlight int64  `json:"in_flight_count"`
	Deferred int64  `json:"deferred_count"`
	Requeued int64  `json:"requeue_count"`
	TimedOut int64  `json:"timeout_count"`
	Clients  int    `json:"client_count"`
}

// channel is one channel's entry in nsqd's /stats.
func (n *NSQ) channel(ctx context.Context, topic, channel string) (channelStats, error) {
	u := "http://" + n.HTTPAddr + "/stats?format=json&topic=" + url.QueryEscape(topic) + "&channel=" + url.QueryEscape(channel)
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return channelStats{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return channelStats{}, err
	}
	defer resp.Body.Close()
	var st struct {
		Topics []struct {
			Name     string         `json:"topic_name"`
			Channels []channelStats `json:"channels"`
		} `json:"topics"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return channelStats{}, fmt.Errorf("decoding nsqd stats: %w", err)
	}
	for _, tp := range st.Topics {
		for _, ch := range tp.Channels {
			if tp.Name == topic && ch.Name == channel {
				return ch, nil
			}
		}
	}
	return channelStats{}, fmt.Errorf("no channel %s/%s on nsqd", topic, channel)
}

// Kill ends nsqd with SIGKILL, as a crash would, and waits for it.
func (n *NSQ) Kill() { n.nsqd.kill() }

// PID is nsqd's process id, 0 when it is not running.
func (n *NSQ) PID() int { return n.nsqd.pid() }
