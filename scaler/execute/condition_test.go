package execute

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/policy"
)

// Every Held word has its own reason, and the message says what the rule
// wants and the last scale, with nothing that moves between decisions.
func TestConditionFor(t *testing.T) {
	spec := &annotations.Spec{MinReplicas: 1, MaxReplicas: 10}
	reasons := map[string]bool{}
	for h := range held {
		c := conditionFor(h, spec, 3, 3, "")
		if c.Status != corev1.ConditionFalse || c.Reason == "" || c.Reason == "Held" {
			t.Errorf("held %q: %+v", h, c)
		}
		if reasons[c.Reason] {
			t.Errorf("held %q: reason %s shared with another Held word", h, c.Reason)
		}
		reasons[c.Reason] = true
	}
	for _, h := range []string{policy.HeldMax, policy.HeldMin, policy.HeldMaxDelta, policy.HeldRateLimit, policy.HeldDelay, policy.HeldUnreadable,
		policy.HeldFallback, policy.HeldPaused, policy.HeldBudget, policy.HeldRoom, policy.HeldPriority, policy.HeldSaturated, HeldConflict} {
		if _, ok := held[h]; !ok {
			t.Errorf("Held word %q has no reason", h)
		}
	}
	c := conditionFor("", spec, 2, 4, "1 -> 2 at 2026-12-07T03:40:00Z: backlog 120 > target 10")
	want := "replicas: wants 4, has 2 (min 1, max 10); last scaled 1 -> 2 at 2026-12-07T03:40:00Z: backlog 120 > target 10"
	if c.Status != corev1.ConditionTrue || c.Reason != ReasonFollowingLoad || c.Message != want {
		t.Errorf("following: %+v, want True %s %q", c, ReasonFollowingLoad, want)
	}
	if c := conditionFor(policy.HeldUnreadable, spec, 3, 3, ""); !strings.HasPrefix(c.Message, "queue unreadable") || c.Reason != ReasonQueueUnreadable {
		t.Errorf("unreadable: %+v", c)
	}
	if c := conditionFor("a word of a newer policy", spec, 3, 3, ""); c.Status != corev1.ConditionFalse || c.Reason != "Held" {
		t.Errorf("an unknown Held word: %+v", c)
	}
}
