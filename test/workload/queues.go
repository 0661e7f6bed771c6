package workload

import (
	"context"
	"errors"
	"math"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	natsgo "github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	amqp "github.com/rabbitmq/amqp091-go"
	goredis "github.com/redis/go-redis/v9"
	"k8s.io/klog/v2"
)

// RabbitMQ connects one consumer per pod to a RabbitMQ queue (amqp URL),
// holding prefetch messages at once and acknowledging each once handled.
func RabbitMQ(url, queue string, prefetch int) func(pod string, handle func([]byte)) (func(), error) {
	return func(pod string, handle func([]byte)) (func(), error) {
		conn, err := amqp.Dial(url)
		if err != nil {
			return nil, err
		}
		ch, err := conn.Channel()
		if err == nil {
			err = ch.Qos(max(1, prefetch), 0, false)
		}
		var deliveries <-chan amqp.Delivery
		if err == nil {
			deliveries, err = ch.Consume(queue, pod, false, false, false, false, nil)
		}
		if err != nil {
			return nil, errors.Join(err, conn.Close())
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			for d := range deliveries {
				handle(d.Body)
				if err := d.Ack(false); err != nil {
					return // the channel closed under us: stopping
				}
			}
		}()
		return func() {
			// Stop deliveries; what is held is redelivered once closed.
			logClose("rabbitmq consumer "+pod, errors.Join(ch.Cancel(pod, false), conn.Close()))
			<-done
		}, nil
	}
}

// PublishRabbitMQ returns a publish function for Pace: n stamped messages
// to queue through the default exchange.
func PublishRabbitMQ(ctx context.Context, url, queue string) (publish func(n int) error, stop func(), err error) {
	conn, err := amqp.Dial(url)
	if err != nil {
		return nil, nil, err
	}
	ch, err := conn.Channel()
	if err != nil {
		return nil, nil, errors.Join(err, conn.Close())
	}
	var mu sync.Mutex
	return func(n int) error {
		mu.Lock()
		defer mu.Unlock()
		for _, b := range stamped(n) {
			if err := ch.PublishWithContext(ctx, "", queue, false, false, amqp.Publishing{Body: b}); err != nil {
				return err
			}
		}
		return nil
	}, func() { logClose("rabbitmq publisher", conn.Close()) }, nil
}

// logClose logs a failure to close a test client: nothing is lost by it,
// but it is not hidden either.
func logClose(what string, err error) {
	if err != nil && !errors.Is(err, amqp.ErrClosed) {
		klog.Background().Info("closing", "what", what, "err", err)
	}
}

// RedisList connects one consumer per pod to a Redis list, taking one item
// at a time (BLPOP) and handling it; nothing is held in flight.
func RedisList(addr, password, key string) func(pod string, handle func([]byte)) (func(), error) {
	return func(pod string, handle func([]byte)) (func(), error) {
		c := goredis.NewClient(&goredis.Options{Addr: addr, Password: password})
		return background(func(ctx context.Context) error {
			res, err := c.BLPop(ctx, time.Second, key).Result() // a second is BLPOP's least timeout
			switch {
			case errors.Is(err, goredis.Nil):
				return nil // nothing waiting
			case err != nil:
				return err
			}
			handle([]byte(res[1]))
			return nil
		}, func() { logClose("redis consumer "+pod, c.Close()) }), nil
	}
}

// background calls take until stopped, waiting a little after an error
// (the server away) rather than spinning; stop ends it, waits, and closes.
func background(take func(ctx context.Context) error, closeClient func()) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			if err := take(ctx); err != nil && ctx.Err() == nil {
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
		}
	}()
	return func() { cancel(); <-done; closeClient() }
}

// PublishRedisList returns a publish function for Pace: n stamped items
// pushed on the list.
func PublishRedisList(ctx context.Context, addr, password, key string) (publish func(n int) error, stop func()) {
	c := goredis.NewClient(&goredis.Options{Addr: addr, Password: password})
	return func(n int) error {
		items := make([]any, n)
		for i, b := range stamped(n) {
			items[i] = string(b)
		}
		return c.RPush(ctx, key, items...).Err()
	}, func() { logClose("redis publisher", c.Close()) }
}

// DeclareRabbitMQ declares a durable queue.
func DeclareRabbitMQ(url, queue string) error {
	conn, err := amqp.Dial(url)
	if err != nil {
		return err
	}
	ch, err := conn.Channel()
	if err == nil {
		_, err = ch.QueueDeclare(queue, true, false, false, false, nil)
	}
	return errors.Join(err, conn.Close())
}

// RedisStream connects one consumer per pod to a Redis stream's consumer
// group, reading one entry at a time (XREADGROUP) and acknowledging it
// (XACK) once handled; while it works, the entry is pending.
func RedisStream(addr, password, key, group string) func(pod string, handle func([]byte)) (func(), error) {
	return func(pod string, handle func([]byte)) (func(), error) {
		c := goredis.NewClient(&goredis.Options{Addr: addr, Password: password})
		return background(func(ctx context.Context) error {
			res, err := c.XReadGroup(ctx, &goredis.XReadGroupArgs{Group: group, Consumer: pod, Streams: []string{key, ">"},
				Count: 1, Block: time.Second}).Result()
			switch {
			case errors.Is(err, goredis.Nil):
				return nil
			case err != nil:
				return err
			}
			for _, s := range res {
				for _, m := range s.Messages {
					body, _ := m.Values["body"].(string) // a missing field is an empty message
					handle([]byte(body))
					if err := c.XAck(ctx, key, group, m.ID).Err(); err != nil {
						return err // the entry stays pending
					}
				}
			}
			return nil
		}, func() { logClose("redis stream consumer "+pod, c.Close()) }), nil
	}
}

// DeclareRedisStream creates the stream key with consumer group group,
// reading from its start.
func DeclareRedisStream(ctx context.Context, addr, password, key, group string) error {
	c := goredis.NewClient(&goredis.Options{Addr: addr, Password: password})
	return errors.Join(c.XGroupCreateMkStream(ctx, key, group, "0").Err(), c.Close())
}

// PublishRedisStream returns a publish function for Pace: n stamped entries
// added to the stream (XADD, field "body").
func PublishRedisStream(ctx context.Context, addr, password, key string) (publish func(n int) error, stop func()) {
	c := goredis.NewClient(&goredis.Options{Addr: addr, Password: password})
	return func(n int) error {
		p := c.Pipeline()
		for _, b := range stamped(n) {
			p.XAdd(ctx, &goredis.XAddArgs{Stream: key, Values: []any{"body", string(b)}})
		}
		_, err := p.Exec(ctx)
		return err
	}, func() { logClose("redis stream publisher", c.Close()) }
}

// NATS connects one consumer per pod to a JetStream durable pull consumer
// (url of the NATS server), fetching one message at a time and
// acknowledging it once handled; while it works the message is pending
// acknowledgement. The client reconnects by itself when the server
// returns.
func NATS(url, stream, consumer string) func(pod string, handle func([]byte)) (func(), error) {
	return func(pod string, handle func([]byte)) (func(), error) {
		nc, err := natsgo.Connect(url, natsgo.Name(pod), natsgo.MaxReconnects(-1), natsgo.ReconnectWait(200*time.Millisecond))
		if err != nil {
			return nil, err
		}
		js, err := nc.JetStream()
		var sub *natsgo.Subscription
		if err == nil {
			sub, err = js.PullSubscribe("", consumer, natsgo.Bind(stream, consumer))
		}
		if err != nil {
			nc.Close()
			return nil, err
		}
		return background(func(context.Context) error {
			msgs, err := sub.Fetch(1, natsgo.MaxWait(time.Second))
			switch {
			case errors.Is(err, natsgo.ErrTimeout):
				return nil // nothing waiting
			case err != nil:
				return err
			}
			for _, m := range msgs {
				handle(m.Data)
				if err := m.Ack(); err != nil {
					return err // redelivered after AckWait
				}
			}
			return nil
		}, nc.Close), nil
	}
}

// DeclareNATS creates a file-backed stream on subject and a durable pull
// consumer of it with explicit acknowledgement.
func DeclareNATS(url, stream, subject, consumer string) error {
	nc, err := natsgo.Connect(url)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := nc.JetStream()
	if err != nil {
		return err
	}
	if _, err := js.AddStream(&natsgo.StreamConfig{Name: stream, Subjects: []string{subject}, Storage: natsgo.FileStorage}); err != nil {
		return err
	}
	_, err = js.AddConsumer(stream, &natsgo.ConsumerConfig{Durable: consumer, AckPolicy: natsgo.AckExplicitPolicy, AckWait: 30 * time.Second})
	return err
}

// PublishNATS returns a publish function for Pace: n stamped messages to
// subject, each acknowledged by the stream. The client reconnects by itself.
func PublishNATS(url, subject string) (publish func(n int) error, stop func(), err error) {
	nc, err := natsgo.Connect(url, natsgo.MaxReconnects(-1), natsgo.ReconnectWait(200*time.Millisecond))
	if err != nil {
		return nil, nil, err
	}
	js, err := nc.JetStream()
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	var mu sync.Mutex
	return func(n int) error {
		mu.Lock()
		defer mu.Unlock()
		for _, b := range stamped(n) {
			if _, err := js.PublishAsync(subject, b); err != nil {
				return err
			}
		}
		select {
		case <-js.PublishAsyncComplete():
			return nil
		case <-time.After(5 * time.Second):
			return errors.New("nats: publishes not acknowledged within 5 s")
		}
	}, nc.Close, nil
}

// ListExporter is what a queue exporter shows Prometheus for a Redis list:
// its length (demo_queue_length), read at each scrape, and how many
// messages the producer put on it (demo_queue_published_total).
type ListExporter struct {
	Handler http.Handler
	// Publish wraps a publish function so that what it sends is counted.
	Publish func(publish func(n int) error) func(n int) error
}

// ExportRedisList serves the length of a Redis list key, and a publish
// counter, for Prometheus to scrape.
func ExportRedisList(addr, password, key string) ListExporter {
	c := goredis.NewClient(&goredis.Options{Addr: addr, Password: password})
	var published atomic.Int64
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "demo_queue_length", Help: "Messages waiting on the list."}, func() float64 {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			n, err := c.LLen(ctx, key).Result()
			if err != nil {
				return math.NaN() // not known: Prometheus stores NaN, the query is refused
			}
			return float64(n)
		}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "demo_queue_published_total", Help: "Messages the producer put on the list."},
			func() float64 { return float64(published.Load()) }),
	)
	return ListExporter{
		Handler: promhttp.HandlerFor(reg, promhttp.HandlerOpts{}),
		Publish: func(publish func(int) error) func(int) error {
			return func(n int) error {
				err := publish(n)
				if err == nil {
					published.Add(int64(n))
				}
				return err
			}
		},
	}
}
