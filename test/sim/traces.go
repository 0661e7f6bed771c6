package sim

import (
	"math"
	"math/rand/v2"
	"time"
)

// Trace is a producer: a Poisson rate of messages per second at t, plus
// bursts put on the queue at once.
type Trace struct {
	Name     string
	Duration time.Duration
	Rate     func(t time.Duration) float64
	Bursts   []Burst
	// Noise multiplies the rate by a seeded factor in [1-Noise, 1+Noise],
	// drawn anew every second.
	Noise float64
	// Smooth: no burst and no step; a rule should spend little above the
	// work content on it.
	Smooth bool
}

// Burst is a one-off batch of messages.
type Burst struct {
	At       time.Duration
	Messages int
}

// Stretch is a span where the trace's rate (without noise) only rises
// (Dir 1), only falls (-1) or stays (0).
type Stretch struct {
	Start, End time.Duration
	Dir        int
}

// Stretches cuts the trace into monotonic stretches, sampling its rate
// every second; a burst starts a new flat stretch.
func (tr Trace) Stretches() []Stretch {
	var out []Stretch
	cur := Stretch{Dir: 0}
	burstAt := map[time.Duration]bool{}
	for _, b := range tr.Bursts {
		burstAt[b.At.Truncate(time.Second)] = true
	}
	for t := time.Second; t < tr.Duration; t += time.Second {
		d := tr.Rate(t) - tr.Rate(t-time.Second)
		dir := 0
		if d > 1e-9 {
			dir = 1
		} else if d < -1e-9 {
			dir = -1
		}
		if dir != cur.Dir || burstAt[t-time.Second] {
			cur.End = t - time.Second
			if cur.End > cur.Start {
				out = append(out, cur)
			}
			cur = Stretch{Start: t - time.Second, Dir: dir}
		}
	}
	cur.End = tr.Duration
	return append(out, cur)
}

// rateFunc is the trace's rate with the seed's noise.
func (tr Trace) rateFunc(seed uint64) func(time.Duration) float64 {
	if tr.Noise == 0 {
		return tr.Rate
	}
	rng := rand.New(rand.NewPCG(seed, 0x4015e))
	n := int(tr.Duration/time.Second) + 1
	f := make([]float64, n)
	for i := range f {
		f[i] = 1 + tr.Noise*(2*rng.Float64()-1)
	}
	return func(t time.Duration) float64 { return tr.Rate(t) * f[min(n-1, int(t/time.Second))] }
}

// needed is the most replicas the trace's rate needs.
func (tr Trace) needed(w World) int32 {
	peak := 0.0
	for t := time.Duration(0); t < tr.Duration; t += time.Second {
		peak = math.Max(peak, tr.Rate(t))
	}
	return int32(math.Ceil(peak*(1+tr.Noise)/w.ServiceRate - 1e-9))
}

// Traces are the producer patterns of the benchmark; d scales the long ones.
func Traces(d time.Duration) []Trace {
	at := func(f float64) time.Duration { return time.Duration(f * float64(d)) }
	sec := func(t time.Duration) float64 { return t.Seconds() / d.Seconds() }
	return []Trace{
		// The side-by-side shape measured against KEDA on the real stack.
		{Name: "burst-steady", Duration: 150 * time.Second,
			Bursts: []Burst{{At: 5 * time.Second, Messages: 1000}},
			Rate: func(t time.Duration) float64 {
				if t >= 5*time.Second && t < 65*time.Second {
					return 100
				}
				return 0
			}},
		{Name: "ramp", Duration: d, Smooth: true, Rate: func(t time.Duration) float64 {
			return 5 + 195*(1-math.Abs(2*sec(t)-1))
		}},
		{Name: "step-up", Duration: d, Rate: func(t time.Duration) float64 {
			if t < at(0.2) {
				return 20
			}
			return 150
		}},
		{Name: "step-down", Duration: d, Rate: func(t time.Duration) float64 {
			if t < at(0.4) {
				return 150
			}
			return 20
		}},
		{Name: "sine", Duration: d, Smooth: true, Rate: func(t time.Duration) float64 {
			return 80 + 60*math.Sin(2*math.Pi*t.Seconds()/300)
		}},
		{Name: "diurnal", Duration: d, Smooth: true, Noise: 0.2, Rate: func(t time.Duration) float64 {
			x := sec(t)
			return 10 + 110*math.Exp(-math.Pow((x-0.55)/0.2, 2))
		}},
		{Name: "spikes", Duration: d, Rate: func(t time.Duration) float64 {
			if math.Mod(t.Seconds(), 180) >= 60 && math.Mod(t.Seconds(), 180) < 80 {
				return 300
			}
			return 30
		}},
		{Name: "constant", Duration: d, Smooth: true, Rate: func(time.Duration) float64 { return 60 }},
		// A slow linear rise, then a hold: the shape the rule once stalled
		// on, taking a group's throughput for one replica's.
		{Name: "rise-hold", Duration: d, Smooth: true, Rate: func(t time.Duration) float64 {
			return 2 + 118*min(sec(t)/0.7, 1)
		}},
	}
}

// meanRate is the trace's average arrival rate, bursts included.
func meanRate(tr Trace) float64 {
	sum, n := 0.0, 0
	for t := time.Duration(0); t < tr.Duration; t += time.Second {
		sum += tr.Rate(t)
		n++
	}
	for _, b := range tr.Bursts {
		sum += float64(b.Messages)
	}
	return sum / float64(n)
}
