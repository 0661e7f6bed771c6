package harness

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The other queue servers (Debian's redis-server, nats-server,
// rabbitmq-server and prometheus), each started from a test on 127.0.0.1
// and stopped by its process group when the test ends. .ci/run installs
// them; a machine without them fails the test with the command to run.

// Server is one running queue server.
type Server struct {
	// Addr is the address clients use (Redis, NATS and AMQP clients).
	Addr string
	// HTTPAddr is where the controller reads it: NATS's monitoring port,
	// RabbitMQ's management API, Prometheus's API; Addr for Redis.
	HTTPAddr string
	p        *process
}

// PID is the server's process id (0 once stopped).
func (s *Server) PID() int { return s.p.pid() }

// Stop stops the server and waits until it has exited.
func (s *Server) Stop() { s.p.stop(15 * time.Second) }

func lookBin(t testing.TB, name string) string {
	t.Helper()
	for _, dir := range []string{"", "/usr/sbin/", "/usr/lib/rabbitmq/bin/"} {
		if p, err := exec.LookPath(dir + name); err == nil {
			return p
		}
	}
	t.Fatalf("%s not found: apt-get install -y --no-install-recommends redis-server nats-server rabbitmq-server prometheus (.ci/run does)", name)
	return ""
}

func startServer(t testing.TB, p *process, ready func(ctx context.Context) error, within time.Duration) {
	t.Helper()
	if err := p.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s log:\n%s", p.name, p.tail(3000))
		}
		p.stop(15 * time.Second)
	})
	ctx, cancel := context.WithTimeout(t.Context(), within)
	defer cancel()
	if err := poll(ctx, p, 100*time.Millisecond, ready); err != nil {
		t.Fatalf("%s did not come up within %s: %v\n%s", p.name, within, err, p.tail(3000))
	}
}

// StartRedis starts redis-server with no persistence; args are added to
// its command line (--requirepass PASSWORD, say).
func StartRedis(t testing.TB, args ...string) *Server {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: addr(port)}
	s.HTTPAddr = s.Addr
	s.p = &process{name: "redis-server", bin: lookBin(t, "redis-server"), log: filepath.Join(t.TempDir(), "redis.log"),
		args: append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"}, args...)}
	startServer(t, s.p, func(ctx context.Context) error { return dialed(ctx, s.Addr) }, 30*time.Second)
	return s
}

// StartNATS starts nats-server with JetStream.
func StartNATS(t testing.TB) *Server {
	t.Helper()
	ports, err := freePorts(2)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: addr(ports[0]), HTTPAddr: addr(ports[1])}
	s.p = &process{name: "nats-server", bin: lookBin(t, "nats-server"), log: filepath.Join(t.TempDir(), "nats.log"),
		args: []string{"-js", "-a", "127.0.0.1", "-p", strconv.Itoa(ports[0]), "-m", strconv.Itoa(ports[1]), "-sd", t.TempDir()}}
	startServer(t, s.p, func(ctx context.Context) error { return httpOK(ctx, "http://"+s.HTTPAddr+"/healthz") }, 30*time.Second)
	return s
}

// StartRabbitMQ starts rabbitmq-server with the management plugin; the
// guest user (guest/guest) works from loopback. It takes some 15 s.
func StartRabbitMQ(t testing.TB) *Server {
	t.Helper()
	ports, err := freePorts(4)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: addr(ports[0]), HTTPAddr: addr(ports[1])}
	dir, err := os.MkdirTemp("", "rabbitmq-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.WriteFile(filepath.Join(dir, "enabled_plugins"), []byte("[rabbitmq_management].\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// As root the start script drops to the rabbitmq user: its directory
	// must be that user's.
	if os.Geteuid() == 0 {
		u, err := user.Lookup("rabbitmq")
		if err != nil {
			t.Fatalf("rabbitmq-server drops to the rabbitmq user as root: %v", err)
		}
		uid, err := strconv.Atoi(u.Uid)
		if err != nil {
			t.Fatal(err)
		}
		gid, err := strconv.Atoi(u.Gid)
		if err != nil {
			t.Fatal(err)
		}
		if err := chownAll(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	}
	bin := lookBin(t, "rabbitmq-server")
	sh := strings.Join([]string{
		"HOME=" + dir, "RABBITMQ_NODE_IP_ADDRESS=127.0.0.1", "RABBITMQ_NODE_PORT=" + strconv.Itoa(ports[0]),
		"RABBITMQ_DIST_PORT=" + strconv.Itoa(ports[2]), "ERL_EPMD_PORT=" + strconv.Itoa(ports[3]), "ERL_EPMD_ADDRESS=127.0.0.1",
		"RABBITMQ_NODENAME=ms" + strconv.Itoa(ports[0]) + "@localhost", "RABBITMQ_MNESIA_BASE=" + dir + "/mnesia",
		"RABBITMQ_LOG_BASE=" + dir + "/log", "RABBITMQ_ENABLED_PLUGINS_FILE=" + dir + "/enabled_plugins",
		"RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-rabbitmq_management listener [{port," + strconv.Itoa(ports[1]) + "},{ip,\"127.0.0.1\"}]'",
		"exec", bin,
	}, " ")
	s.p = &process{name: "rabbitmq-server", bin: "/bin/sh", log: filepath.Join(dir, "rabbitmq.log"), args: []string{"-c", sh}}
	startServer(t, s.p, func(ctx context.Context) error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.HTTPAddr+"/api/overview", nil)
		if err != nil {
			return err
		}
		req.SetBasicAuth("guest", "guest")
		return do(req)
	}, 90*time.Second)
	return s
}

// StartPrometheus starts prometheus scraping targets (host:port) every
// second.
func StartPrometheus(t testing.TB, targets ...string) *Server {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Addr: addr(port)}
	s.HTTPAddr = s.Addr
	dir := t.TempDir()
	quoted := make([]string, len(targets))
	for i, tg := range targets {
		quoted[i] = strconv.Quote(tg)
	}
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: queues\n    static_configs:\n      - targets: [%s]\n", strings.Join(quoted, ", "))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s.p = &process{name: "prometheus", bin: lookBin(t, "prometheus"), log: filepath.Join(dir, "prometheus.log"),
		args: []string{"--config.file=" + filepath.Join(dir, "prometheus.yml"), "--web.listen-address=" + s.Addr,
			"--storage.tsdb.path=" + filepath.Join(dir, "data")}}
	startServer(t, s.p, func(ctx context.Context) error { return httpOK(ctx, "http://"+s.Addr+"/-/ready") }, 60*time.Second)
	return s
}

func chownAll(dir string, uid, gid int) error {
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Chown(p, uid, gid)
	})
}

func dialed(ctx context.Context, a string) error {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", a)
	if err != nil {
		return err
	}
	return c.Close()
}

func httpOK(ctx context.Context, u string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	return do(req)
}

func do(req *http.Request) error {
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: HTTP %d", req.URL, resp.StatusCode)
	}
	return nil
}
