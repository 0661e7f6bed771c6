package execute

import (
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/informer/snapshot"
	"github.com/microscaling/microscaling/scaler/condition"
	"github.com/microscaling/microscaling/scaler/policy"
)

// Conditions keeps each member's durable condition on its Deployment
// (condition.Writer); nil in Config: none is kept.
type Conditions interface {
	Set(d *snapshot.Object, c condition.Condition)
	Clear(d *snapshot.Object)
	Forget(namespace, name string)
}

// HeldConflict is the Held word of a member another autoscaler scales.
const HeldConflict = "conflict"

// Reasons of the microscaling.com/Scaling condition: ReasonFollowingLoad
// with status True, the others with False, one for each Held word.
const ReasonFollowingLoad = "FollowingLoad"

// held names each Held word as a condition reason, and says it.
var held = map[string]struct{ reason, says string }{
	policy.HeldMax:        {"AtMaxReplicas", "held at max-replicas"},
	policy.HeldMin:        {"AtMinReplicas", "held at min-replicas"},
	policy.HeldMaxDelta:   {"StepLimited", "max-delta limits each step"},
	policy.HeldRateLimit:  {"RateLimited", "scale-up-limit or scale-down-limit reached"},
	policy.HeldDelay:      {"ScaleDownDelay", "scale-down-delay keeps the replicas up"},
	policy.HeldUnreadable: {ReasonQueueUnreadable, "queue unreadable: replicas held as they are"},
	policy.HeldFallback:   {"FallbackReplicas", "queue unreadable for fallback-after: at fallback-replicas"},
	policy.HeldPaused:     {"Paused", "paused: replicas left as they are"},
	policy.HeldBudget:     {"GroupBudget", "group-max-replicas taken by higher priorities"},
	policy.HeldRoom:       {"NoRoom", "no node room left to it"},
	policy.HeldPriority:   {ReasonRemainderPriority, "its pods' priority is above --remainder-max-priority: not grown"},
	policy.HeldSaturated:  {ReasonSaturated, "more replicas stopped adding throughput: held at the knee (or probing a step above it)"},
	HeldConflict:          {ReasonConflictingScaler, "another autoscaler targets it: left alone"},
}

// conditionFor is what a member's Deployment says after a decision that
// wants desired replicas of it, held by the Held word h (empty: nothing
// holds it); lastScale tells microscaling's last write, if any. Nothing
// in it moves with the load between writes, so it changes only when the
// decision does.
func conditionFor(h string, spec *annotations.Spec, cur, desired int32, lastScale string) condition.Condition {
	c := condition.Condition{Status: corev1.ConditionTrue, Reason: ReasonFollowingLoad}
	var msg []string
	if h != "" {
		c.Status, c.Reason = corev1.ConditionFalse, "Held"
		if r, ok := held[h]; ok {
			c.Reason = r.reason
			msg = append(msg, r.says)
		}
	}
	msg = append(msg, fmt.Sprintf("replicas: wants %d, has %d (min %d, max %d)", desired, cur, spec.MinReplicas, spec.MaxReplicas))
	if lastScale != "" {
		msg = append(msg, "last scaled "+lastScale)
	}
	c.Message = strings.Join(msg, "; ")
	return c
}
