package workload

import (
	"context"
	"errors"
	"sync"
	"time"

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
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			for ctx.Err() == nil {
				res, err := c.BLPop(ctx, time.Second, key).Result() // a second is BLPOP's least timeout
				switch {
				case errors.Is(err, goredis.Nil) || ctx.Err() != nil:
					continue // nothing waiting, or stopping
				case err != nil || len(res) != 2:
					// The server is away: try again shortly rather than spin.
					select {
					case <-ctx.Done():
					case <-time.After(100 * time.Millisecond):
					}
					continue
				}
				handle([]byte(res[1]))
			}
		}()
		return func() { cancel(); <-done; logClose("redis consumer "+pod, c.Close()) }, nil
	}
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
