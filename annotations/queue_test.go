package annotations

import (
	"strings"
	"testing"
)

func TestParseQueueForms(t *testing.T) {
	tests := []struct {
		in   string
		want QueueRef
	}{
		{"nsq://nsqd:4151/jobs/work", QueueRef{Scheme: "nsq", Host: "nsqd:4151", Name: "jobs", Sub: "work"}},
		{"rabbitmq://rabbit:15672/%2F/orders", QueueRef{Scheme: "rabbitmq", Host: "rabbit:15672", Name: "orders", Sub: "/"}},
		{"rabbitmq://rabbit:15672/prod/orders%20eu", QueueRef{Scheme: "rabbitmq", Host: "rabbit:15672", Name: "orders eu", Sub: "prod"}},
		{"redis://redis:6379/jobs", QueueRef{Scheme: "redis", Host: "redis:6379", Name: "jobs"}},
		{"redis://redis:6379/app%2Fjobs?group=workers", QueueRef{Scheme: "redis", Host: "redis:6379", Name: "app/jobs", Sub: "workers"}},
		{"nats://nats:8222/ORDERS/worker", QueueRef{Scheme: "nats", Host: "nats:8222", Name: "ORDERS", Sub: "worker"}},
		{"prometheus://prom:9090?backlog=sum(kafka_lag%7Btopic%3D%22a%22%7D)",
			QueueRef{Scheme: "prometheus", Host: "prom:9090", Name: `sum(kafka_lag{topic="a"})`}},
		{"prometheus://[::1]:9090?backlog=sum+by+(a%2Cb)(x)&arrivals=sum(y_total)",
			QueueRef{Scheme: "prometheus", Host: "[::1]:9090", Name: "sum by (a,b)(x)", Sub: "sum(y_total)"}},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, problem := parseQueue(tc.in)
			if problem != "" {
				t.Fatalf("refused: %s", problem)
			}
			if got != tc.want {
				t.Fatalf("got %+v, want %+v", got, tc.want)
			}
			// What String renders parses back to the same queue.
			again, problem := parseQueue(got.String())
			if problem != "" || again != got {
				t.Errorf("String() %q parses back to %+v (%s)", got.String(), again, problem)
			}
		})
	}
}

func TestParseQueueFormsRefused(t *testing.T) {
	long := strings.Repeat("a", 256)
	tests := []struct{ in, wantText string }{
		{"amqp://rabbit:5672/%2F/q", "rabbitmq://HOST:PORT/VHOST/QUEUE"},
		{"rabbitmq://rabbit/%2F/q", "port"},
		{"rabbitmq://rabbit:15672/q", "VHOST/QUEUE"},
		{"rabbitmq://rabbit:15672/v/" + long, "1-255 bytes"},
		{"rabbitmq://rabbit:15672/v/q%00", "control"},
		{"rabbitmq://rabbit:15672/v/q?x=1", "VHOST/QUEUE"},
		{"redis://redis:6379/a/b", "%2F"},
		{"redis://redis:6379/k?group=g&x=1", "consumer group"},
		{"redis://redis:6379/k?group=", "consumer group"},
		{"redis://redis:6379/", "KEY"},
		{"nats://nats:8222/S.1/c", "STREAM/CONSUMER"},
		{"nats://nats:8222/S/c>", "STREAM/CONSUMER"},
		{"prometheus://prom:9090", "backlog=PROMQL"},
		{"prometheus://prom:9090/api?backlog=x", "backlog=PROMQL"},
		{"prometheus://prom:9090?arrivals=x", "backlog=PROMQL"},
		{"prometheus://prom:9090?backlog=x&backlog=y", "backlog=PROMQL"},
		{"prometheus://prom:9090?backlog=x&step=1", "backlog=PROMQL"},
		{"prometheus://prom:9090?backlog=" + strings.Repeat("x", MaxQueryBytes+1), "at most 1024 bytes"},
		{"prometheus://prom:9090?backlog=%20", "backlog=PROMQL"},
		{"prometheus://user@prom:9090?backlog=x", "port"},
	}
	for _, tc := range tests {
		t.Run(tc.in[:min(len(tc.in), 60)], func(t *testing.T) {
			if got, problem := parseQueue(tc.in); problem == "" {
				t.Fatalf("accepted as %+v", got)
			} else if !strings.Contains(problem, tc.wantText) {
				t.Errorf("problem %q does not say %q", problem, tc.wantText)
			}
		})
	}
}

func TestParseWaitTargetNeedsArrivals(t *testing.T) {
	for _, q := range []string{"redis://r:6379/jobs", "prometheus://p:9090?backlog=x"} {
		_, err := Parse("d", map[string]string{Queue: q, TargetWait: "5s", MaxReplicas: "3"})
		if err == nil || !strings.Contains(err.Error(), "count arrivals") {
			t.Errorf("%s with a wait target: %v, want a problem naming arrivals", q, err)
		}
	}
	for _, q := range []string{"redis://r:6379/jobs?group=g", "prometheus://p:9090?backlog=x&arrivals=y", "rabbitmq://r:15672/v/q", "nats://n:8222/s/c"} {
		if _, err := Parse("d", map[string]string{Queue: q, TargetWait: "5s", MaxReplicas: "3"}); err != nil {
			t.Errorf("%s with a wait target: %v", q, err)
		}
	}
}
