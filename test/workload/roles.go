package workload

import (
	"context"
	"fmt"
	"math"
	"time"

	"github.com/nsqio/go-nsq"
	"k8s.io/klog/v2"
)

// Schedule is a producer rate that rises and falls between Min and Max
// messages per second over Period.
type Schedule struct {
	Min, Max float64
	Period   time.Duration
}

// Rate is the schedule's rate at t since the start.
func (s Schedule) Rate(t time.Duration) float64 {
	if s.Period <= 0 {
		return s.Max
	}
	return s.Min + (s.Max-s.Min)*(1-math.Cos(2*math.Pi*t.Seconds()/s.Period.Seconds()))/2
}

// Produce publishes to topic on schedule until ctx ends, in 100 ms batches.
func Produce(ctx context.Context, addr, topic string, s Schedule) error {
	return ProduceRate(ctx, addr, topic, s.Rate)
}

// Ramp rises linearly from From to To messages per second over Rise, then
// holds To.
type Ramp struct {
	From, To float64
	Rise     time.Duration
}

// Rate is the ramp's rate at t since the start.
func (r Ramp) Rate(t time.Duration) float64 {
	if t >= r.Rise || r.Rise <= 0 {
		return r.To
	}
	return r.From + (r.To-r.From)*t.Seconds()/r.Rise.Seconds()
}

// ProduceRate publishes to topic at rate(time since the start) messages per
// second until ctx ends, in 100 ms batches.
func ProduceRate(ctx context.Context, addr, topic string, rate func(time.Duration) float64) error {
	p, err := nsq.NewProducer(addr, nsq.NewConfig())
	if err != nil {
		return fmt.Errorf("producer: %w", err)
	}
	p.SetLoggerLevel(nsq.LogLevelError)
	defer p.Stop()
	Pace(ctx, rate, func(n int) error { return p.MultiPublish(topic, stamped(n)) })
	return nil
}

// Pace calls publish with how many messages to send every 100 ms so that
// rate(time since the start) messages per second go out, until ctx ends.
// A failed batch is logged and not sent again.
func Pace(ctx context.Context, rate func(time.Duration) float64, publish func(n int) error) {
	start := time.Now()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	owed := 0.0
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		owed += rate(time.Since(start)) / 10
		n := int(owed)
		if n == 0 {
			continue
		}
		owed -= float64(n)
		if err := publish(n); err != nil && ctx.Err() == nil {
			klog.FromContext(ctx).Info("publish failed; going on with the next batch", "err", err)
		}
	}
}

// Consume takes messages from topic/channel, working per on each, until ctx
// ends. lookupd, when set, finds the nsqds; otherwise nsqd is used.
func Consume(ctx context.Context, nsqd, lookupd, topic, channel string, per time.Duration) error {
	cfg := nsq.NewConfig()
	cfg.MaxInFlight = 1
	c, err := nsq.NewConsumer(topic, channel, cfg)
	if err != nil {
		return fmt.Errorf("consumer: %w", err)
	}
	c.SetLoggerLevel(nsq.LogLevelError)
	c.AddHandler(nsq.HandlerFunc(func(*nsq.Message) error {
		time.Sleep(per) // the demo's work on a message
		return nil
	}))
	if lookupd != "" {
		err = c.ConnectToNSQLookupd(lookupd)
	} else {
		err = c.ConnectToNSQD(nsqd)
	}
	if err != nil {
		return fmt.Errorf("connecting consumer: %w", err)
	}
	<-ctx.Done()
	c.Stop()
	<-c.StopChan
	return nil
}
