package harness

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// process is one server the harness started, in its own process group so
// that stopping it stops whatever it started too.
type process struct {
	name string
	bin  string
	args []string
	log  string // path of the combined stdout and stderr
	// cred, when set, is the user the process runs as (a server that would
	// otherwise drop to its user itself, in a session of its own that
	// stopping the group would not reach).
	cred *syscall.Credential

	mu   sync.Mutex // guards cmd and done
	cmd  *exec.Cmd
	done chan struct{}
}

func (p *process) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("opening log of %s: %w", p.name, err)
	}
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr = f, f
	// Own process group, and killed if the test binary dies without cleanup.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: p.cred}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("starting %s: %w", p.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait() // the exit status of a server we stop is not interesting
		f.Close()
		close(done)
	}()
	p.cmd, p.done = cmd, done
	return nil
}

// pid returns the process id, or 0 when it is not running.
func (p *process) pid() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return 0
	}
	select {
	case <-p.done:
		return 0
	default:
		return p.cmd.Process.Pid
	}
}

// stop sends SIGTERM to the process group, then SIGKILL after grace, and
// waits for the process to exit.
func (p *process) stop(grace time.Duration) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	pgid := cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-done
	}
	// Anything left in the group (children that ignored SIGTERM) goes too,
	// and is waited for: a server started again finds its ports free.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if err := syscall.Kill(-pgid, 0); errors.Is(err, syscall.ESRCH) {
			break
		}
	}
	p.mu.Lock()
	p.cmd = nil
	p.mu.Unlock()
}

// kill sends SIGKILL to the process group and waits, as a crash would.
func (p *process) kill() { p.stop(0) }

// exited is closed when the current run of the process ends.
func (p *process) exited() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		c := make(chan struct{})
		close(c)
		return c
	}
	return p.done
}

// tail returns the last n bytes of the process log, for failure messages.
func (p *process) tail(n int64) string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		return err.Error()
	}
	if int64(len(b)) > n {
		b = b[int64(len(b))-n:]
	}
	return string(b)
}

// freePort returns a TCP port on 127.0.0.1 that nothing listens on now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func freePorts(n int) ([]int, error) {
	// Hold every listener until all are chosen so that no two are the same.
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("finding a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func addr(port int) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) }

// poll calls check every interval until it returns nil, the process exits,
// or ctx ends.
func poll(ctx context.Context, p *process, interval time.Duration, check func(context.Context) error) error {
	var last error
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if last = check(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w (last check: %v)\n--- log tail ---\n%s", p.name, ctx.Err(), last, p.tail(3000))
		case <-p.exited():
			return fmt.Errorf("%s exited before it was ready: %w\n--- log tail ---\n%s", p.name, errors.Join(last), p.tail(3000))
		case <-t.C:
		}
	}
}
