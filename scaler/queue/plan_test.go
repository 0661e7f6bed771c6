package queue

import (
	"testing"

	"github.com/microscaling/microscaling/annotations"
)

func TestPlanIsBuiltAgainOnlyWhenTheRefsChange(t *testing.T) {
	var p Plan[int]
	builds := 0
	build := func(refs []Ref) int { builds++; return len(refs) }
	q := func(name string, ns ...string) Ref {
		return Ref{QueueRef: annotations.QueueRef{Scheme: annotations.SchemeNSQ, Host: "nsqd:4151", Name: name}, Namespaces: ns}
	}
	refs := []Ref{q("a", "x"), q("b", "x", "y")}
	for _, step := range []struct {
		name   string
		refs   []Ref
		builds int
	}{
		{"first", refs, 1},
		{"the same slice", refs, 1},
		{"equal refs in a new slice", []Ref{q("a", "x"), q("b", "x", "y")}, 1},
		{"a queue renamed", []Ref{q("a", "x"), q("c", "x", "y")}, 2},
		{"charged to another namespace", []Ref{q("a", "x"), q("c", "x")}, 3},
		{"in another order", []Ref{q("c", "x"), q("a", "x")}, 4},
		{"one more", []Ref{q("c", "x"), q("a", "x"), q("d")}, 5},
		{"none", nil, 6},
		{"none again", []Ref{}, 6},
	} {
		if got := p.For(step.refs, build); got != len(step.refs) || builds != step.builds {
			t.Errorf("%s: plan %d after %d builds, want %d after %d", step.name, got, builds, len(step.refs), step.builds)
		}
	}
	// The plan keeps its own copy: a caller reusing its slice does not
	// make a changed set look unchanged.
	refs = []Ref{q("a", "x")}
	p.For(refs, build)
	refs[0] = q("z", "x")
	before := builds
	p.For(refs, build)
	if builds != before+1 {
		t.Errorf("a slice changed in place after the call was taken for the same refs")
	}
}
