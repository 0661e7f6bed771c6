package queue

import (
	"context"
	"maps"
	"slices"
	"testing"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/policy"
)

// calls records what each Read was given.
type calls struct {
	reads     [][]Ref
	elsewhere []map[string]int
}

func (c *calls) Read(_ context.Context, refs []Ref) policy.Readings {
	c.reads = append(c.reads, refs)
	return nil
}

// charger is a Source that takes the hosts counted elsewhere.
type charger struct{ calls }

func (c *charger) ReadCharged(_ context.Context, refs []Ref, elsewhere map[string]int) policy.Readings {
	c.elsewhere = append(c.elsewhere, elsewhere)
	return c.Read(context.Background(), refs)
}

// Schemes one Source reads go to it in one Read (so it reads each server
// once), and a Charger is told the hosts each namespace takes through the
// other sources, as the host cap counts them.
func TestSourcesReadEachSourceOnce(t *testing.T) {
	nsq, other := &charger{}, &calls{}
	s := NewSources(map[string]Source{"nsq": nsq, "nsqlookupd": nsq, "rabbitmq": other, "redis": other})
	ref := func(scheme, host, name, sub string, namespaces ...string) Ref {
		return Ref{QueueRef: annotations.QueueRef{Scheme: scheme, Host: host, Name: name, Sub: sub}, Namespaces: namespaces}
	}
	refs := []Ref{
		ref("nsq", "n:4151", "t", "c", "a"),
		ref("nsqlookupd", "l:4161", "t", "c", "a", "b"),
		ref("rabbitmq", "r:15672", "q1", "v1", "a"),
		ref("rabbitmq", "r:15672", "q2", "v1", "a"), // the same virtual host: one request
		ref("rabbitmq", "r:15672", "q3", "v2", "b"),
		ref("redis", "d:6379", "k", "", "b"),
		ref("nats", "x:8222", "s", "c", "a"), // no source: left out
	}
	s.Read(context.Background(), refs)
	if len(nsq.reads) != 1 || len(nsq.reads[0]) != 2 {
		t.Fatalf("the nsq source was read %d times with %v; want once with both its refs", len(nsq.reads), nsq.reads)
	}
	if len(other.reads) != 1 || len(other.reads[0]) != 4 {
		t.Errorf("the other source was read %d times with %v; want once with its 4 refs", len(other.reads), other.reads)
	}
	want := map[string]int{"a": 1, "b": 2}
	if !maps.Equal(nsq.elsewhere[0], want) {
		t.Errorf("elsewhere = %v, want %v", nsq.elsewhere[0], want)
	}
	// The same refs again: the same split, from the plan.
	s.Read(context.Background(), slices.Clone(refs))
	if len(nsq.reads) != 2 || !maps.Equal(nsq.elsewhere[1], want) {
		t.Errorf("second read: %d reads, elsewhere %v", len(nsq.reads), nsq.elsewhere)
	}
}
