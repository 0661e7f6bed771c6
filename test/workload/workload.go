// Package workload closes the loop for tests and the local demo: it starts
// one NSQ consumer per Running pod of a Deployment (kwok pods run nothing),
// each taking a fixed time per message, and publishes messages.
package workload

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/nsqio/go-nsq"
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

	mu      sync.Mutex // guards running
	running map[string]*nsq.Consumer
}

// Run keeps one consumer per Running pod until ctx ends, then stops them all.
func (c *Consumers) Run(ctx context.Context) {
	c.mu.Lock()
	c.running = map[string]*nsq.Consumer{}
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
	for name, cons := range c.running {
		if !want[name] {
			cons.Stop()
			delete(c.running, name)
		}
	}
	for name := range want {
		if _, ok := c.running[name]; ok {
			continue
		}
		cfg := nsq.NewConfig()
		cfg.MaxInFlight = 1
		cons, err := nsq.NewConsumer(c.Topic, c.Channel, cfg)
		if err != nil {
			return fmt.Errorf("consumer for pod %s: %w", name, err)
		}
		cons.SetLoggerLevel(nsq.LogLevelError)
		per := c.PerMessage
		cons.AddHandler(nsq.HandlerFunc(func(*nsq.Message) error {
			time.Sleep(per) // the simulated work of a message
			return nil
		}))
		if err := cons.ConnectToNSQD(c.NSQDTCPAddr); err != nil {
			return fmt.Errorf("connecting consumer for pod %s: %w", name, err)
		}
		c.running[name] = cons
	}
	return nil
}

func (c *Consumers) stopAll() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, cons := range c.running {
		cons.Stop()
		<-cons.StopChan
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
		batch := make([][]byte, min(n, 100))
		for i := range batch {
			batch[i] = []byte("job")
		}
		if err := p.MultiPublish(topic, batch); err != nil {
			return fmt.Errorf("publishing to %s: %w", topic, err)
		}
		n -= len(batch)
	}
	return nil
}
