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
	"syscall"
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
	ready    func(ctx context.Context) error
	within   time.Duration
}

// PID is the server's process id (0 once stopped).
func (s *Server) PID() int { return s.p.pid() }

// Stop stops the server and waits until it has exited.
func (s *Server) Stop() { s.p.stop(15 * time.Second) }

// Tail is the end of the server's log, for failure messages.
func (s *Server) Tail() string { return s.p.tail(3000) }

// Start starts the server (again, after Stop: same addresses and data)
// and waits until it answers.
func (s *Server) Start(ctx context.Context) error {
	if err := s.p.start(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.within)
	defer cancel()
	if err := poll(ctx, s.p, 100*time.Millisecond, s.ready); err != nil {
		s.Stop()
		return fmt.Errorf("%s did not come up within %s: %w", s.p.name, s.within, err)
	}
	return nil
}

// Restart starts a stopped server again and waits until it answers.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
}

func lookBin(name string) (string, error) {
	for _, dir := range []string{"", "/usr/sbin/", "/usr/lib/rabbitmq/bin/"} {
		if p, err := exec.LookPath(dir + name); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found: apt-get install -y --no-install-recommends redis-server nats-server rabbitmq-server prometheus (.ci/run and make deps do)", name)
}

// started starts a server a constructor made for a test, stopped when the
// test ends (its log shown if the test failed).
func started(t testing.TB, s *Server, err error) *Server {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s log:\n%s", s.p.name, s.Tail())
		}
		s.Stop()
	})
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	return s
}

// StartRedis starts redis-server for a test; see NewRedis.
func StartRedis(t testing.TB, args ...string) *Server {
	t.Helper()
	s, err := NewRedis(t.TempDir(), args...)
	return started(t, s, err)
}

// NewRedis is redis-server keeping its data in an append-only file in dir,
// so that a restart finds the lists and streams it held; args are added to
// its command line (--requirepass PASSWORD, say). Start runs it.
func NewRedis(dir string, args ...string) (*Server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	bin, err := lookBin("redis-server")
	if err != nil {
		return nil, err
	}
	s := &Server{Addr: addr(port), within: 30 * time.Second}
	s.HTTPAddr = s.Addr
	s.p = &process{name: "redis-server", bin: bin, log: filepath.Join(dir, "redis.log"),
		args: append([]string{"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes", "--dir", dir}, args...)}
	s.ready = func(ctx context.Context) error { return dialed(ctx, s.Addr) }
	return s, nil
}

// StartNATS starts nats-server for a test; see NewNATS.
func StartNATS(t testing.TB) *Server {
	t.Helper()
	s, err := NewNATS(t.TempDir())
	return started(t, s, err)
}

// NewNATS is nats-server with JetStream, its streams kept in dir. Start
// runs it.
func NewNATS(dir string) (*Server, error) {
	ports, err := freePorts(2)
	if err != nil {
		return nil, err
	}
	bin, err := lookBin("nats-server")
	if err != nil {
		return nil, err
	}
	s := &Server{Addr: addr(ports[0]), HTTPAddr: addr(ports[1]), within: 30 * time.Second}
	s.p = &process{name: "nats-server", bin: bin, log: filepath.Join(dir, "nats.log"),
		args: []string{"-js", "-a", "127.0.0.1", "-p", strconv.Itoa(ports[0]), "-m", strconv.Itoa(ports[1]), "-sd", dir}}
	s.ready = func(ctx context.Context) error { return httpOK(ctx, "http://"+s.HTTPAddr+"/healthz") }
	return s, nil
}

// StartRabbitMQ starts rabbitmq-server for a test; see NewRabbitMQ.
func StartRabbitMQ(t testing.TB) *Server {
	t.Helper()
	// Not t.TempDir: as root the directory goes to the rabbitmq user.
	dir, err := os.MkdirTemp("", "rabbitmq-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	s, err := NewRabbitMQ(dir)
	return started(t, s, err)
}

// NewRabbitMQ is rabbitmq-server with the management plugin, its data in
// dir; the guest user (guest/guest) works from loopback. It takes some
// 15 s to start. Its management API's queue figures move in steps of
// 5 s (measured with RabbitMQ 3.10, whatever collect_statistics_interval
// says).
func NewRabbitMQ(dir string) (*Server, error) {
	ports, err := freePorts(4)
	if err != nil {
		return nil, err
	}
	s := &Server{Addr: addr(ports[0]), HTTPAddr: addr(ports[1]), within: 90 * time.Second}
	if err := os.WriteFile(filepath.Join(dir, "enabled_plugins"), []byte("[rabbitmq_management].\n"), 0o644); err != nil {
		return nil, err
	}
	conf := fmt.Sprintf("management.tcp.port = %d\nmanagement.tcp.ip = 127.0.0.1\n", ports[1])
	if err := os.WriteFile(filepath.Join(dir, "rabbitmq.conf"), []byte(conf), 0o644); err != nil {
		return nil, err
	}
	// As root the start script would drop to the rabbitmq user through su,
	// in a session of its own that outlives a stop: run it as that user
	// from the start, in its directory.
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup("rabbitmq")
		if err != nil {
			return nil, fmt.Errorf("rabbitmq-server runs as the rabbitmq user: %w", err)
		}
		uid, err := strconv.Atoi(u.Uid)
		if err != nil {
			return nil, err
		}
		gid, err := strconv.Atoi(u.Gid)
		if err != nil {
			return nil, err
		}
		if err := chownAll(dir, uid, gid); err != nil {
			return nil, err
		}
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	}
	bin, err := lookBin("rabbitmq-server")
	if err != nil {
		return nil, err
	}
	epmd, err := lookBin("epmd")
	if err != nil {
		epmd = "/usr/lib/erlang/bin/epmd"
	}
	// Erlang's port mapper would daemonize out of the process group: one of
	// the server's own runs in the foreground beside it and stops with it.
	sh := strings.Join([]string{
		"export HOME=" + dir, "ERL_EPMD_PORT=" + strconv.Itoa(ports[3]), "ERL_EPMD_ADDRESS=127.0.0.1;",
		epmd, "-port", strconv.Itoa(ports[3]), "-address", "127.0.0.1", "&",
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1", "RABBITMQ_NODE_PORT=" + strconv.Itoa(ports[0]),
		"RABBITMQ_DIST_PORT=" + strconv.Itoa(ports[2]),
		"RABBITMQ_NODENAME=ms" + strconv.Itoa(ports[0]) + "@localhost", "RABBITMQ_MNESIA_BASE=" + dir + "/mnesia",
		"RABBITMQ_LOG_BASE=" + dir + "/log", "RABBITMQ_ENABLED_PLUGINS_FILE=" + dir + "/enabled_plugins",
		"RABBITMQ_CONFIG_FILE=" + dir + "/rabbitmq.conf",
		"exec", bin,
	}, " ")
	s.p = &process{name: "rabbitmq-server", bin: "/bin/sh", log: filepath.Join(dir, "rabbitmq.log"), args: []string{"-c", sh}, cred: cred}
	s.ready = func(ctx context.Context) error {
		return httpOKAs(ctx, "http://"+s.HTTPAddr+"/api/overview", "guest", "guest")
	}
	return s, nil
}

// QueueUser is the user a test's queue server admits when it asks for
// credentials; Hash is Password's bcrypt hash (cost 4), as Prometheus's web
// configuration takes it.
var QueueUser = struct{ Name, Password, Hash string }{"scaler", "Pa55-not-for-logs",
	"$2a$04$E9sKI2jH0hy8ai3riYtf8ORw23WXQKm5umYdXh3axF9RkVI2zB7Ca"}

// StartPrometheus starts prometheus for a test; see NewPrometheus.
func StartPrometheus(t testing.TB, targets ...string) *Server {
	t.Helper()
	s, err := NewPrometheus(t.TempDir(), targets...)
	return started(t, s, err)
}

// StartPrometheusWithUser starts prometheus for a test, its API answering
// QueueUser alone (HTTP basic authentication).
func StartPrometheusWithUser(t testing.TB, targets ...string) *Server {
	t.Helper()
	dir := t.TempDir()
	s, err := NewPrometheus(dir, targets...)
	if err == nil {
		err = basicAuth(s, dir)
	}
	return started(t, s, err)
}

// basicAuth makes the prometheus s admit QueueUser alone.
func basicAuth(s *Server, dir string) error {
	web := filepath.Join(dir, "web.yml")
	if err := os.WriteFile(web, []byte(fmt.Sprintf("basic_auth_users:\n  %s: %s\n", QueueUser.Name, QueueUser.Hash)), 0o600); err != nil {
		return err
	}
	s.p.args = append(s.p.args, "--web.config.file="+web)
	s.ready = func(ctx context.Context) error {
		return httpOKAs(ctx, "http://"+s.Addr+"/-/ready", QueueUser.Name, QueueUser.Password)
	}
	return nil
}

// NewPrometheus is prometheus scraping targets (host:port) every second,
// its data in dir. Start runs it.
func NewPrometheus(dir string, targets ...string) (*Server, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	bin, err := lookBin("prometheus")
	if err != nil {
		return nil, err
	}
	s := &Server{Addr: addr(port), within: 60 * time.Second}
	s.HTTPAddr = s.Addr
	quoted := make([]string, len(targets))
	for i, tg := range targets {
		quoted[i] = strconv.Quote(tg)
	}
	cfg := fmt.Sprintf("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: queues\n    static_configs:\n      - targets: [%s]\n", strings.Join(quoted, ", "))
	if err := os.WriteFile(filepath.Join(dir, "prometheus.yml"), []byte(cfg), 0o600); err != nil {
		return nil, err
	}
	s.p = &process{name: "prometheus", bin: bin, log: filepath.Join(dir, "prometheus.log"),
		args: []string{"--config.file=" + filepath.Join(dir, "prometheus.yml"), "--web.listen-address=" + s.Addr,
			"--storage.tsdb.path=" + filepath.Join(dir, "data")}}
	s.ready = func(ctx context.Context) error { return httpOK(ctx, "http://"+s.Addr+"/-/ready") }
	return s, nil
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

func httpOK(ctx context.Context, u string) error { return httpOKAs(ctx, u, "", "") }

// httpOKAs GETs u, as user (HTTP basic authentication) when one is given,
// and wants 200.
func httpOKAs(ctx context.Context, u, user, password string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	if user != "" {
		req.SetBasicAuth(user, password)
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
