package policy

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"
)

// world is a queue whose consumers each serve perReplica messages a second,
// all of them together at most limit (a shared downstream; 0: none); new
// replicas consume from the next tick.
type world struct {
	arrival, perReplica, limit float64
	backlog, arrived, done     float64
	consuming                  int32
	// noise, when set, makes each interval's arrivals and service random
	// (Poisson-like: the count's square root either way).
	noise *rand.Rand
}

// jitter is x give or take its square root, when the world is noisy.
func (w *world) jitter(x float64) float64 {
	if w.noise == nil || x <= 0 {
		return x
	}
	return max(0, x+w.noise.NormFloat64()*math.Sqrt(x))
}

func (w *world) tick(dt float64, replicas int32) QueueReading {
	in := w.jitter(w.arrival * dt)
	w.arrived += in
	w.backlog += in
	capacity := float64(w.consuming) * w.perReplica
	if w.limit > 0 {
		capacity = min(capacity, w.limit)
	}
	served := min(w.backlog, w.jitter(capacity*dt))
	w.backlog -= served
	w.done += served
	r := QueueReading{Backlog: int64(math.Round(w.backlog)), Arrived: int64(math.Round(w.arrived)), Consumers: int64(w.consuming)}
	r.Waiting = max(0, r.Backlog-int64(w.consuming))
	w.consuming = replicas
	return r
}

// run steps the rule over the world for d, one read a second, and returns
// the last decision and the most replicas asked for.
func (w *world) run(s *MemberState, p QueuePolicy, at *time.Time, cur *int32, d time.Duration) (Decision, int32) {
	var dec Decision
	peak := *cur
	for range int(d / time.Second) {
		*at = at.Add(time.Second)
		dec = s.Step(p, *at, *cur, *cur, w.tick(1, *cur), true)
		if testing.Verbose() && dec.Replicas != *cur {
			fmt.Printf("%s: %d -> %d %s (held %s)\n", at.Format("04:05"), *cur, dec.Replicas, dec.Reason, dec.Held)
		}
		*cur = dec.Replicas
		peak = max(peak, *cur)
	}
	return dec, peak
}

// Consumers behind a shared 40/s limit, 80/s arriving: the rule stops
// near the knee (4 replicas) instead of at max-replicas, says so, gives
// the overshoot back, and grows again once the limit is lifted.
func TestSaturationStopsAtTheKnee(t *testing.T) {
	p := QueuePolicy{Target: 50, Min: 1, Max: 40, ScaleDownDelay: 30 * time.Second}
	w := &world{arrival: 80, perReplica: 10, limit: 40, consuming: 1}
	var s MemberState
	at, cur := time.Unix(0, 0), int32(1)
	d, peak := w.run(&s, p, &at, &cur, 2*time.Minute)
	if !d.Saturated.Saturated || d.Held != HeldSaturated || cur > 6 || cur < 4 {
		t.Fatalf("after 2 minutes behind a 40/s limit: %d replicas (peak %d), held %q, %+v; want 4-6 (the knee, 4, within 1.5x), held saturated", cur, peak, d.Held, d.Saturated)
	}
	t.Logf("saturated: %d replicas (peak %d), knee %d, ceiling %.1f/s", cur, peak, d.Saturated.Knee, d.Saturated.Ceiling)
	// Held there while the limit stands (probing a step above now and then).
	_, peak = w.run(&s, p, &at, &cur, 3*time.Minute)
	if peak > 6 {
		t.Errorf("with the limit standing, replicas reached %d; probes are bounded a step above the knee", peak)
	}
	// The limit lifted: a probe delivers more, and the rule grows to what
	// 80/s needs at 10/s a replica (8), and drains the backlog.
	w.limit = 0
	d, _ = w.run(&s, p, &at, &cur, 4*time.Minute)
	if cur < 8 || d.Held == HeldSaturated || d.Saturated.Cap != 0 {
		t.Errorf("4 minutes after the limit was lifted: %d replicas, held %q, %+v; want at least 8, free", cur, d.Held, d.Saturated)
	}
}

// Consumers that each get slower (every message costs twice as much) are
// not saturated: more replicas still add throughput, and the rule grows
// to what the load needs.
func TestSlowerConsumersAreNotSaturated(t *testing.T) {
	p := QueuePolicy{Target: 50, Min: 1, Max: 40, ScaleDownDelay: 30 * time.Second}
	w := &world{arrival: 40, perReplica: 10, consuming: 1}
	var s MemberState
	at, cur := time.Unix(0, 0), int32(1)
	w.run(&s, p, &at, &cur, 2*time.Minute)
	w.perReplica = 5
	d, peak := w.run(&s, p, &at, &cur, 3*time.Minute)
	if cur < 8 || d.Held == HeldSaturated || d.Saturated.Cap != 0 {
		t.Errorf("after the consumers slowed to 5/s: %d replicas (peak %d), held %q, %+v; want at least 8 (40/s at 5/s), not saturated", cur, peak, d.Held, d.Saturated)
	}
}

// With noisy arrivals and service, over several seeds: a limit is found
// and held near its knee; consumers that are only slow, and a burst that
// more replicas drain, are never taken for saturated.
func TestSaturationWithNoise(t *testing.T) {
	p := QueuePolicy{Target: 50, Min: 1, Max: 40, ScaleDownDelay: 30 * time.Second}
	for seed := range uint64(10) {
		rng := rand.New(rand.NewPCG(seed, 7))
		capped := &world{arrival: 80, perReplica: 10, limit: 40, consuming: 1, noise: rng}
		var s MemberState
		at, cur := time.Unix(0, 0), int32(1)
		d, _ := capped.run(&s, p, &at, &cur, 3*time.Minute)
		if d.Held != HeldSaturated || cur > 6 {
			t.Errorf("seed %d, behind a 40/s limit: %d replicas, held %q; want at most 6, saturated", seed, cur, d.Held)
		}
		for name, w := range map[string]*world{
			"slower":                        {arrival: 40, perReplica: 5, consuming: 1, noise: rng},
			"a 1,000-message burst at 20/s": {arrival: 20, perReplica: 10, consuming: 1, noise: rng, backlog: 1000, arrived: 1000},
		} {
			var s MemberState
			at, cur := time.Unix(0, 0), int32(1)
			for range 180 {
				at = at.Add(time.Second)
				d := s.Step(p, at, cur, cur, w.tick(1, cur), true)
				if d.Held == HeldSaturated || d.Saturated.Cap != 0 {
					t.Errorf("seed %d, %s: held saturated at %s with %d replicas: %s", seed, name, at.Format("04:05"), cur, d.Reason)
					break
				}
				cur = d.Replicas
			}
		}
	}
}

// A saturation is forgotten once nothing waited for a whole window after
// its hold: a later load that more replicas serve grows freely.
func TestSaturationForgottenWhenIdle(t *testing.T) {
	p := QueuePolicy{Target: 50, Min: 1, Max: 40, ScaleDownDelay: 30 * time.Second}
	w := &world{arrival: 80, perReplica: 10, limit: 40, consuming: 1}
	var s MemberState
	at, cur := time.Unix(0, 0), int32(1)
	if d, _ := w.run(&s, p, &at, &cur, time.Minute); d.Held != HeldSaturated {
		t.Fatalf("behind the limit: held %q, want saturated", d.Held)
	}
	w.arrival, w.limit, w.backlog = 5, 0, 0
	w.run(&s, p, &at, &cur, 5*time.Minute)
	w.arrival = 120
	d, peak := w.run(&s, p, &at, &cur, time.Minute)
	if peak < 12 || d.Saturated.Cap != 0 {
		t.Errorf("120/s at 10/s a replica after a quiet spell: up to %d replicas, %+v; want 12 or more, no cap", peak, d.Saturated)
	}
}

// Consumers busy at their max for a minute (a backlog they could not
// drain), then allowed more just as each slows to half its rate: the
// minute at the old rate makes more replicas look like they add little,
// but the knee tried delivers less than more did, so it is no saturation:
// the rule grows to what the slower work needs, and nothing is told.
func TestSlowdownAfterABusySpellIsNotSaturation(t *testing.T) {
	p := QueuePolicy{Target: 50, Min: 1, Max: 4, ScaleDownDelay: 30 * time.Second}
	w := &world{arrival: 45, perReplica: 10, consuming: 1}
	var s MemberState
	at, cur := time.Unix(0, 0), int32(1)
	w.run(&s, p, &at, &cur, time.Minute)
	p.Max, w.perReplica = 40, 5
	told := false
	for range 180 {
		at = at.Add(time.Second)
		d := s.Step(p, at, cur, cur, w.tick(1, cur), true)
		told = told || d.Saturated.Saturated
		cur = d.Replicas
	}
	if cur < 9 || told {
		t.Errorf("3 minutes after the slowdown: %d replicas, saturation told %v; want at least 9 (45/s at 5/s), none told", cur, told)
	}
}
