package annotations

import (
	"fmt"
	"maps"
	"os"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestParseValid(t *testing.T) {
	tests := []struct {
		name string
		ann  map[string]string
		want Spec
	}{
		{
			name: "queue member with defaults",
			ann:  map[string]string{Queue: "nsq://nsq:4151/jobs/work", TargetQueueLength: "50", MaxReplicas: "10"},
			want: Spec{Group: "consumer", Priority: 1, Rule: RuleQueue, TargetQueueLength: 50, MaxReplicas: 10,
				ScaleDownDelay: DefaultScaleDownDelay,
				Queues:         []QueueRef{{Scheme: "nsq", Host: "nsq:4151", Name: "jobs", Sub: "work"}}},
		},
		{
			name: "remainder with every optional key",
			ann: map[string]string{Rule: "remainder", Group: "demo", Priority: "2", MinReplicas: "1", MaxReplicas: "20",
				MaxDelta: "3", ScaleDownDelay: "1m", GroupMaxReplicas: "10", Paused: "true", SyncLabels: "false"},
			want: Spec{Group: "demo", Priority: 2, Rule: RuleRemainder, MinReplicas: 1, MaxReplicas: 20, MaxDelta: 3,
				ScaleDownDelay: time.Minute, GroupMaxReplicas: 10, Paused: true},
		},
		{
			name: "several queues, lookupd and ephemeral channel",
			ann: map[string]string{Rule: "queue", Queue: "nsqlookupd://lookup:4161/a/b, nsq://10.0.0.1:4151/a/c#ephemeral",
				TargetQueueLength: "1", MaxReplicas: "1"},
			want: Spec{Group: "consumer", Priority: 1, Rule: RuleQueue, TargetQueueLength: 1, MaxReplicas: 1,
				ScaleDownDelay: DefaultScaleDownDelay, Queues: []QueueRef{
					{Scheme: "nsqlookupd", Host: "lookup:4161", Name: "a", Sub: "b"},
					{Scheme: "nsq", Host: "10.0.0.1:4151", Name: "a", Sub: "c#ephemeral"}}},
		},
		{
			name: "wait target instead of a queue length",
			ann:  map[string]string{Queue: "nsq://nsq:4151/jobs/work", TargetWait: "2.5s", MaxReplicas: "10"},
			want: Spec{Group: "consumer", Priority: 1, Rule: RuleQueue, TargetWait: 2500 * time.Millisecond, MaxReplicas: 10,
				ScaleDownDelay: DefaultScaleDownDelay,
				Queues:         []QueueRef{{Scheme: "nsq", Host: "nsq:4151", Name: "jobs", Sub: "work"}}},
		},
		{
			name: "both targets",
			ann:  map[string]string{Queue: "nsq://nsq:4151/jobs/work", TargetQueueLength: "500", TargetWait: "1m", MaxReplicas: "10"},
			want: Spec{Group: "consumer", Priority: 1, Rule: RuleQueue, TargetQueueLength: 500, TargetWait: time.Minute, MaxReplicas: 10,
				ScaleDownDelay: DefaultScaleDownDelay,
				Queues:         []QueueRef{{Scheme: "nsq", Host: "nsq:4151", Name: "jobs", Sub: "work"}}},
		},
		{
			name: "fallback, its delay by default and given",
			ann:  map[string]string{Queue: "nsq://nsq:4151/jobs/work", TargetQueueLength: "50", MaxReplicas: "10", FallbackReplicas: "3"},
			want: Spec{Group: "consumer", Priority: 1, Rule: RuleQueue, TargetQueueLength: 50, MaxReplicas: 10,
				ScaleDownDelay: DefaultScaleDownDelay, FallbackReplicas: 3, FallbackAfter: DefaultFallbackAfter,
				Queues: []QueueRef{{Scheme: "nsq", Host: "nsq:4151", Name: "jobs", Sub: "work"}}},
		},
		{
			name: "fallback to zero after 20s",
			ann:  map[string]string{Queue: "nsq://nsq:4151/jobs/work", TargetQueueLength: "50", MaxReplicas: "10", FallbackReplicas: "0", FallbackAfter: "20s"},
			want: Spec{Group: "consumer", Priority: 1, Rule: RuleQueue, TargetQueueLength: 50, MaxReplicas: 10,
				ScaleDownDelay: DefaultScaleDownDelay, FallbackReplicas: 0, FallbackAfter: 20 * time.Second,
				Queues: []QueueRef{{Scheme: "nsq", Host: "nsq:4151", Name: "jobs", Sub: "work"}}},
		},
		{
			name: "other annotations are ignored",
			ann:  map[string]string{Rule: "remainder", MaxReplicas: "2", "deployment.kubernetes.io/revision": "3", "example.com/microscaling.com/x": "y"},
			want: Spec{Group: "consumer", Priority: 1, Rule: RuleRemainder, MaxReplicas: 2, ScaleDownDelay: DefaultScaleDownDelay},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse("consumer", tc.ann)
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Parse =\n%+v\nwant\n%+v", got, tc.want)
			}
		})
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name string
		ann  map[string]string
		// wantKeys are the keys the errors must name, in order.
		wantKeys []string
		// wantText must appear in the message.
		wantText string
	}{
		{name: "missing target and max", ann: map[string]string{Queue: "nsq://h:1/t/c"}, wantKeys: []string{TargetQueueLength, MaxReplicas}, wantText: "required"},
		{name: "target-wait not a duration", ann: map[string]string{Queue: "nsq://h:1/t/c", TargetWait: "10", MaxReplicas: "1"}, wantKeys: []string{TargetWait}, wantText: "a Go duration from 100ms to 24h"},
		{name: "target-wait too short", ann: map[string]string{Queue: "nsq://h:1/t/c", TargetWait: "1ms", MaxReplicas: "1"}, wantKeys: []string{TargetWait}, wantText: "from 100ms"},
		{name: "target-wait too long", ann: map[string]string{Queue: "nsq://h:1/t/c", TargetWait: "25h", MaxReplicas: "1"}, wantKeys: []string{TargetWait}},
		{name: "target-wait negative", ann: map[string]string{Queue: "nsq://h:1/t/c", TargetWait: "-5s", MaxReplicas: "1"}, wantKeys: []string{TargetWait}},
		{name: "rule queue without queue", ann: map[string]string{Rule: "queue", TargetQueueLength: "5", MaxReplicas: "1"}, wantKeys: []string{Queue}, wantText: "nsq://"},
		{name: "unknown rule", ann: map[string]string{Rule: "fifo", MaxReplicas: "1"}, wantKeys: []string{Rule}, wantText: `"remainder"`},
		{name: "typo in key", ann: map[string]string{Rule: "remainder", MaxReplicas: "1", Prefix + "max-replica": "3"}, wantKeys: []string{Prefix + "max-replica"}, wantText: "did you mean microscaling.com/max-replicas"},
		{name: "min above max", ann: map[string]string{Rule: "remainder", MinReplicas: "5", MaxReplicas: "2"}, wantKeys: []string{MinReplicas}, wantText: "at most max-replicas (2)"},
		{name: "negative min", ann: map[string]string{Rule: "remainder", MinReplicas: "-1", MaxReplicas: "2"}, wantKeys: []string{MinReplicas}, wantText: "from 0 to"},
		{name: "overflow", ann: map[string]string{Rule: "remainder", MaxReplicas: "99999999999999999999"}, wantKeys: []string{MaxReplicas}, wantText: "whole number"},
		{name: "float priority", ann: map[string]string{Rule: "remainder", MaxReplicas: "1", Priority: "1.5"}, wantKeys: []string{Priority}, wantText: "from 1 to 1000"},
		{name: "zero priority", ann: map[string]string{Rule: "remainder", MaxReplicas: "1", Priority: "0"}, wantKeys: []string{Priority}},
		{name: "bad duration", ann: map[string]string{Rule: "remainder", MaxReplicas: "1", ScaleDownDelay: "30"}, wantKeys: []string{ScaleDownDelay}, wantText: "Go duration"},
		{name: "negative duration", ann: map[string]string{Rule: "remainder", MaxReplicas: "1", ScaleDownDelay: "-1s"}, wantKeys: []string{ScaleDownDelay}},
		{name: "bad bool", ann: map[string]string{Rule: "remainder", MaxReplicas: "1", Paused: "yes"}, wantKeys: []string{Paused}, wantText: `"true" or "false"`},
		{name: "bad group", ann: map[string]string{Rule: "remainder", MaxReplicas: "1", Group: "Demo Group"}, wantKeys: []string{Group}, wantText: "DNS-1123"},
		{name: "queue on remainder", ann: map[string]string{Rule: "remainder", MaxReplicas: "1", Queue: "nsq://h:1/t/c"}, wantKeys: []string{Queue}, wantText: "not used with rule remainder"},
		{name: "queue scheme", ann: map[string]string{Queue: "http://h:1/t/c", TargetQueueLength: "1", MaxReplicas: "1"}, wantKeys: []string{Queue}},
		{name: "queue without port", ann: map[string]string{Queue: "nsq://h/t/c", TargetQueueLength: "1", MaxReplicas: "1"}, wantKeys: []string{Queue}, wantText: "port"},
		{name: "queue without channel", ann: map[string]string{Queue: "nsq://h:4151/t", TargetQueueLength: "1", MaxReplicas: "1"}, wantKeys: []string{Queue}},
		{name: "queue bad topic", ann: map[string]string{Queue: "nsq://h:4151/t!/c", TargetQueueLength: "1", MaxReplicas: "1"}, wantKeys: []string{Queue}},
		{name: "queue twice", ann: map[string]string{Queue: "nsq://h:4151/t/c,nsq://h:4151/t/c", TargetQueueLength: "1", MaxReplicas: "1"}, wantKeys: []string{Queue}, wantText: "once"},
		{name: "very long value", ann: map[string]string{Rule: "remainder", MaxReplicas: "1", Group: strings.Repeat("a", MaxValueLength+1)}, wantKeys: []string{Group}, wantText: "at most 2048 bytes"},
		{name: "fallback above max", ann: map[string]string{Queue: "nsq://h:1/t/c", TargetQueueLength: "1", MaxReplicas: "5", FallbackReplicas: "6"}, wantKeys: []string{FallbackReplicas}, wantText: "from min-replicas (0) to max-replicas (5)"},
		{name: "fallback below min", ann: map[string]string{Queue: "nsq://h:1/t/c", TargetQueueLength: "1", MinReplicas: "2", MaxReplicas: "5", FallbackReplicas: "1"}, wantKeys: []string{FallbackReplicas}, wantText: "from min-replicas (2)"},
		{name: "fallback on a remainder", ann: map[string]string{Rule: "remainder", MaxReplicas: "5", FallbackReplicas: "1"}, wantKeys: []string{FallbackReplicas}, wantText: "only with rule queue"},
		{name: "fallback-after alone", ann: map[string]string{Queue: "nsq://h:1/t/c", TargetQueueLength: "1", MaxReplicas: "5", FallbackAfter: "20s"}, wantKeys: []string{FallbackAfter}, wantText: "only with fallback-replicas"},
		{name: "fallback-after too short", ann: map[string]string{Queue: "nsq://h:1/t/c", TargetQueueLength: "1", MaxReplicas: "5", FallbackReplicas: "2", FallbackAfter: "500ms"}, wantKeys: []string{FallbackAfter}, wantText: "from 1s to 24h"},
		{name: "fallback not a number", ann: map[string]string{Queue: "nsq://h:1/t/c", TargetQueueLength: "1", MaxReplicas: "5", FallbackReplicas: "three"}, wantKeys: []string{FallbackReplicas}, wantText: "whole number"},
		{name: "every problem at once", ann: map[string]string{Rule: "remainder", MaxReplicas: "x", Priority: "-3", Paused: "1", MaxDelta: "0"},
			wantKeys: []string{Priority, MaxReplicas, MaxDelta, Paused}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("d", tc.ann)
			if err == nil {
				t.Fatal("Parse accepted invalid annotations")
			}
			var keys []string
			for _, fe := range FieldErrors(err) {
				keys = append(keys, fe.Key)
			}
			if !reflect.DeepEqual(keys, tc.wantKeys) {
				t.Errorf("errors name keys %v, want %v (%v)", keys, tc.wantKeys, err)
			}
			if !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("error %q does not say %q", err, tc.wantText)
			}
		})
	}
}

func TestManaged(t *testing.T) {
	tests := []struct {
		name string
		ann  map[string]string
		want bool
	}{
		{name: "none", ann: nil, want: false},
		{name: "only max", ann: map[string]string{MaxReplicas: "3"}, want: false},
		{name: "rule", ann: map[string]string{Rule: "remainder"}, want: true},
		{name: "queue", ann: map[string]string{Queue: "x"}, want: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Managed(tc.ann); got != tc.want {
				t.Errorf("Managed = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestEveryKeyDocumented fails when a key exists in code but not in the reference.
func TestEveryKeyDocumented(t *testing.T) {
	doc, err := os.ReadFile("../docs/annotations.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range Keys {
		if !strings.Contains(string(doc), "| `"+k+"` |") {
			t.Errorf("%s is not a row of docs/annotations.md", k)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add("remainder", "", "", "", "3", "1", "2", "30s", "", "false")
	f.Add("", "nsq://h:4151/t/c", "50", "demo", "10", "0", "", "1m", "10", "true")
	f.Add("queue", "nsqlookupd://[::1]:4161/t/c#ephemeral,nsq://a:1/b/c", "1", "", "1", "", "1", "0s", "", "")
	f.Fuzz(func(t *testing.T, rule, queue, target, group, maxR, minR, delta, delay, budget, paused string) {
		ann := map[string]string{}
		for k, v := range map[string]string{Rule: rule, Queue: queue, TargetQueueLength: target, Group: group,
			MaxReplicas: maxR, MinReplicas: minR, MaxDelta: delta, ScaleDownDelay: delay, GroupMaxReplicas: budget, Paused: paused} {
			if v != "" {
				ann[k] = v
			}
		}
		s, err := Parse("fuzz", ann)
		if err != nil {
			return
		}
		again, err := Parse("other", render(s))
		if err != nil {
			t.Fatalf("accepted %v but not its own rendering %v: %v", ann, render(s), err)
		}
		if !reflect.DeepEqual(s, again) {
			t.Fatalf("round trip changed the spec:\n%+v\n%+v", s, again)
		}
	})
}

// render renders s as the annotations Parse reads back to s. Defaults
// are written out, so the result is explicit.
func render(s Spec) map[string]string {
	a := map[string]string{
		Group:          s.Group,
		Priority:       strconv.Itoa(int(s.Priority)),
		MinReplicas:    strconv.Itoa(int(s.MinReplicas)),
		MaxReplicas:    strconv.Itoa(int(s.MaxReplicas)),
		ScaleDownDelay: s.ScaleDownDelay.String(),
		Paused:         strconv.FormatBool(s.Paused),
		SyncLabels:     strconv.FormatBool(s.SyncLabels),
	}
	if s.Rule != "" {
		a[Rule] = string(s.Rule)
	}
	if len(s.Queues) > 0 {
		qs := make([]string, len(s.Queues))
		for i, q := range s.Queues {
			qs[i] = q.String()
		}
		a[Queue] = strings.Join(qs, ",")
	}
	if s.TargetQueueLength > 0 {
		a[TargetQueueLength] = strconv.FormatInt(s.TargetQueueLength, 10)
	}
	if s.TargetWait > 0 {
		a[TargetWait] = s.TargetWait.String()
	}
	if s.MaxDelta > 0 {
		a[MaxDelta] = strconv.Itoa(int(s.MaxDelta))
	}
	if s.GroupMaxReplicas > 0 {
		a[GroupMaxReplicas] = strconv.Itoa(int(s.GroupMaxReplicas))
	}
	if s.FallbackAfter > 0 {
		a[FallbackReplicas], a[FallbackAfter] = strconv.Itoa(int(s.FallbackReplicas)), s.FallbackAfter.String()
	}
	return a
}

// Parsing stays cheap whatever a tenant writes: 3,000 unknown keys (256 KiB)
// are one problem and nothing else is read; a few unknown keys each get
// one, a "did you mean" only for the first maxSuggestions.
func TestParseIsBounded(t *testing.T) {
	valid := map[string]string{Queue: "nsq://127.0.0.1:4151/jobs/work", TargetQueueLength: "5", MaxReplicas: "5"}
	many := maps.Clone(valid)
	for i := range 3000 {
		many[fmt.Sprintf("%sunknown-key-%04d", Prefix, i)] = strings.Repeat("x", 64)
	}
	_, err := Parse("d", many)
	fes := FieldErrors(err)
	if len(fes) != 1 || fes[0].Key != Prefix+"*" || !strings.Contains(fes[0].Want, "found 3003") {
		t.Fatalf("3,000 unknown keys gave %d problems (%v), want one naming the bound", len(fes), err)
	}
	huge := maps.Clone(valid)
	huge[Prefix+"notes"] = strings.Repeat("x", MaxAnnotationBytes)
	if fes := FieldErrors(func() error { _, err := Parse("d", huge); return err }()); len(fes) != 1 || fes[0].Key != Prefix+"*" {
		t.Errorf("one %d-byte value gave %v, want one problem naming the bound", MaxAnnotationBytes, fes)
	}
	// Every known key at its longest value is within the bounds.
	longest := map[string]string{}
	for _, k := range Keys {
		longest[k] = strings.Repeat("9", MaxValueLength)
	}
	if n, size := Count(longest); n > MaxAnnotations || size > MaxAnnotationBytes {
		t.Errorf("the known keys at their longest are %d annotations of %d bytes, over the bounds %d / %d", n, size, MaxAnnotations, MaxAnnotationBytes)
	}
	few := maps.Clone(valid)
	for i := range 20 {
		few[fmt.Sprintf("%smax-replica%d", Prefix, i)] = "1"
	}
	hints := 0
	for _, fe := range FieldErrors(func() error { _, err := Parse("d", few); return err }()) {
		if !strings.HasPrefix(fe.Want, "unknown key") {
			t.Errorf("%s: %s, want unknown key", fe.Key, fe.Want)
		}
		if strings.Contains(fe.Want, "(") {
			hints++
		}
	}
	if hints != maxSuggestions {
		t.Errorf("%d unknown keys carry a suggestion, want %d", hints, maxSuggestions)
	}
}

// With queues kept to a Deployment's own namespace, another namespace's
// Service and a bare name (which resolves in the controller's namespace)
// are refused; IPs and names outside the cluster are the endpoint
// policy's to judge.
func TestQueuesInNamespace(t *testing.T) {
	for q, ok := range map[string]bool{
		"nsq://nsqd.team-a:4151/t/c":                                true,
		"nsq://nsqd.team-a.svc:4151/t/c":                            true,
		"nsqlookupd://nsqlookupd.team-a.svc.cluster.local:4161/t/c": true,
		"nsq://10.1.2.3:4151/t/c":                                   true,
		"nsq://[fd00::1]:4151/t/c":                                  true,
		"nsq://nsq.example.com:4151/t/c":                            true,
		"nsq://nsqd.team-b:4151/t/c":                                false,
		"nsq://nsqd.team-b.svc.cluster.local:4151/t/c":              false,
		"nsq://nsqd:4151/t/c":                                       false,
	} {
		spec, err := Parse("d", map[string]string{Queue: q, TargetQueueLength: "5", MaxReplicas: "5"})
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		err = QueuesInNamespace(spec, "team-a")
		if (err == nil) != ok {
			t.Errorf("%s: err = %v, want allowed %v", q, err, ok)
		}
		if fes := FieldErrors(err); err != nil && (len(fes) != 1 || fes[0].Key != Queue) {
			t.Errorf("%s: problems %v, want one naming %s", q, fes, Queue)
		}
	}
}

func TestReplicasAndSameManaged(t *testing.T) {
	three := int32(3)
	if Replicas(nil) != 1 || Replicas(&three) != 3 {
		t.Errorf("Replicas: nil -> %d, 3 -> %d; want 1, 3", Replicas(nil), Replicas(&three))
	}
	a := map[string]string{MaxReplicas: "3", Queue: "nsq://h:4151/t/c", "team": "a"}
	for _, tc := range []struct {
		b    map[string]string
		same bool
	}{
		{map[string]string{MaxReplicas: "3", Queue: "nsq://h:4151/t/c", "team": "b", "other": "x"}, true},
		{map[string]string{MaxReplicas: "4", Queue: "nsq://h:4151/t/c", "team": "a"}, false},
		{map[string]string{MaxReplicas: "3", "team": "a"}, false},
		{map[string]string{MaxReplicas: "3", Queue: "nsq://h:4151/t/c", Paused: "true"}, false},
	} {
		if got := SameManaged(a, tc.b); got != tc.same {
			t.Errorf("SameManaged(%v, %v) = %v, want %v", a, tc.b, got, tc.same)
		}
	}
}

func TestOurs(t *testing.T) {
	for key, want := range map[string]bool{
		"microscaling.com/queue":               true,
		"image-labels.microscaling.com/worker": true,
		"kubectl.kubernetes.io/last-applied":   false,
		"xmicroscaling.com/queue":              false,
		"microscaling.com":                     false,
	} {
		if got := Ours(key); got != want {
			t.Errorf("Ours(%q) = %v, want %v", key, got, want)
		}
	}
}
