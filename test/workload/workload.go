// Package workload closes the loop for tests and the local demo: it starts
// one consumer per Running pod of a Deployment (kwok pods run nothing), on
// NSQ or any queue a Connect gives (RabbitMQ, Redis lists), each
// taking a fixed time per message, and publishes messages.
package workload

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nsqio/go-nsq"
	"golang.org/x/time/rate"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"
)

// Consumers mirrors the Running pods of one Deployment as NSQ consumers.
type Consumers struct {
	Client      kubernetes.Interface
	Namespace   string
	Selector    string // label selector of the Deployment's pods
	NSQDTCPAddr string
	Topic       string
	Channel     string
	// PerMessage is how long one consumer works on a message.
	PerMessage time.Duration
	// MaxInFlight is how many messages one consumer holds at once (1 when 0);
	// it handles them one at a time.
	MaxInFlight int
	// Waits, when set, records each stamped message's wait from publish to
	// the start of its handling.
	Waits *Waits
	// Warmup is how long a pod's consumer takes, once the pod is Running,
	// before it connects and takes messages (an image pull, a cache to
	// fill); 0: at once.
	Warmup time.Duration
	// Downstream, when set, is a limit every consumer's work shares (one
	// database, one rate-limited API): a message waits for its turn before
	// its work starts.
	Downstream *rate.Limiter
	// Connect, when set, starts one pod's consumer on another queue: it
	// calls handle for each message it takes, one at a time, and
	// acknowledges it when handle returns; stop ends it and waits. When
	// unset, the consumer is NSQ's (NSQDTCPAddr, Topic, Channel).
	Connect func(pod string, handle func(body []byte)) (stop func(), err error)
	// Kill, with NSQ, makes a removed pod's consumer die as a process
	// killed before its work is done: every message it holds (the one it
	// works on and those delivered to it, waiting) goes back to nsqd to
	// be delivered again (a requeue at once, where a dead client's would
	// come back after nsqd's message timeout). Unset, it stops gracefully,
	// finishing what it holds.
	Kill bool

	mu      sync.Mutex // guards running and seen
	running map[string]func()
	// seen is when each Running pod was first seen Running.
	seen map[string]time.Time
	// slower, when set, replaces PerMessage for every consumer from then on
	// (a downstream dependency that slows down); in nanoseconds.
	slower atomic.Int64
}

// SlowTo makes every consumer take per on each message from now on.
func (c *Consumers) SlowTo(per time.Duration) { c.slower.Store(int64(per)) }

// Run keeps one consumer per Running pod until ctx ends, then stops them all.
func (c *Consumers) Run(ctx context.Context) {
	c.mu.Lock()
	c.running, c.seen = map[string]func(){}, map[string]time.Time{}
	c.mu.Unlock()
	defer c.stopAll()
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		if err := c.sync(ctx); err != nil && ctx.Err() == nil {
			klog.FromContext(ctx).V(2).Info("syncing consumers", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Count is how many consumers run now.
func (c *Consumers) Count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.running)
}

func (c *Consumers) sync(ctx context.Context) error {
	pods, err := c.Client.CoreV1().Pods(c.Namespace).List(ctx, metav1.ListOptions{LabelSelector: c.Selector})
	if err != nil {
		return err
	}
	want := map[string]bool{}
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			want[p.Name] = true
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, stop := range c.running {
		if !want[name] {
			go stop() // a consumer that holds messages may take a while
			delete(c.running, name)
		}
	}
	for name := range c.seen {
		if !want[name] {
			delete(c.seen, name)
		}
	}
	for name := range want {
		if _, ok := c.running[name]; ok {
			continue
		}
		if _, ok := c.seen[name]; !ok {
			c.seen[name] = time.Now()
		}
		if time.Since(c.seen[name]) < c.Warmup {
			continue
		}
		connect := c.Connect
		if connect == nil {
			connect = c.connectNSQ
		}
		stop, err := connect(name, c.handle)
		if err != nil {
			return fmt.Errorf("consumer for pod %s: %w", name, err)
		}
		c.running[name] = stop
	}
	return nil
}

// handle is one message's simulated work.
func (c *Consumers) handle(body []byte) {
	c.Waits.observe(body)
	if c.Downstream != nil {
		if err := c.Downstream.Wait(context.Background()); err != nil {
			klog.Background().Error(err, "waiting for the downstream") // a limiter with no burst: the work goes ahead
		}
	}
	work := c.PerMessage
	if d := c.slower.Load(); d > 0 {
		work = time.Duration(d)
	}
	time.Sleep(work)
}

func (c *Consumers) connectNSQ(pod string, handle func([]byte)) (func(), error) {
	cfg := nsq.NewConfig()
	cfg.MaxInFlight = max(1, c.MaxInFlight)
	cfg.Hostname = pod // as go-nsq in the pod would report it: its host name
	cons, err := nsq.NewConsumer(c.Topic, c.Channel, cfg)
	if err != nil {
		return nil, err
	}
	cons.SetLoggerLevel(nsq.LogLevelError)
	var (
		killed  atomic.Bool
		mu      sync.Mutex   // guards working
		working *nsq.Message // the message being handled, if any
	)
	requeue := func(m *nsq.Message) bool {
		if !c.Kill || !killed.Load() {
			return false
		}
		m.DisableAutoResponse()
		m.RequeueWithoutBackoff(0) // once: go-nsq ignores a second response
		return true
	}
	cons.AddHandler(nsq.HandlerFunc(func(m *nsq.Message) error {
		if requeue(m) {
			return nil
		}
		mu.Lock()
		working = m
		mu.Unlock()
		handle(m.Body)
		mu.Lock()
		working = nil
		mu.Unlock()
		requeue(m) // killed while working: the work died with the pod
		return nil
	}))
	if err := cons.ConnectToNSQD(c.NSQDTCPAddr); err != nil {
		return nil, fmt.Errorf("connecting: %w", err)
	}
	return func() {
		killed.Store(true)
		mu.Lock()
		if working != nil {
			requeue(working)
		}
		mu.Unlock()
		cons.Stop()
		<-cons.StopChan
	}, nil
}

func (c *Consumers) stopAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, stop := range c.running {
		stop()
		delete(c.running, name)
	}
}

// Publish sends n messages to topic in batches.
func Publish(addr, topic string, n int) error {
	p, err := nsq.NewProducer(addr, nsq.NewConfig())
	if err != nil {
		return fmt.Errorf("producer: %w", err)
	}
	p.SetLoggerLevel(nsq.LogLevelError)
	defer p.Stop()
	for n > 0 {
		batch := stamped(min(n, 100))
		if err := p.MultiPublish(topic, batch); err != nil {
			return fmt.Errorf("publishing to %s: %w", topic, err)
		}
		n -= len(batch)
	}
	return nil
}

// stamped returns n message bodies that carry their publish time.
func stamped(n int) [][]byte {
	now := []byte(strconv.FormatInt(time.Now().UnixNano(), 10))
	batch := make([][]byte, n)
	for i := range batch {
		batch[i] = now
	}
	return batch
}

// Waits collects the waits of stamped messages, from publish to the start
// of their handling.
type Waits struct {
	mu    sync.Mutex // guards waits
	waits []time.Duration
}

func (w *Waits) observe(body []byte) {
	if w == nil {
		return
	}
	ns, err := strconv.ParseInt(string(body), 10, 64)
	if err != nil {
		return // not stamped
	}
	d := time.Since(time.Unix(0, ns))
	w.mu.Lock()
	w.waits = append(w.waits, d)
	w.mu.Unlock()
}

// Quantile returns the q-quantile of the waits seen so far, and how many.
func (w *Waits) Quantile(q float64) (time.Duration, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.waits) == 0 {
		return 0, 0
	}
	s := slices.Clone(w.waits)
	slices.Sort(s)
	return s[min(len(s)-1, int(q*float64(len(s))))], len(s)
}

// Reset forgets the waits seen so far.
func (w *Waits) Reset() {
	w.mu.Lock()
	w.waits = nil
	w.mu.Unlock()
}
