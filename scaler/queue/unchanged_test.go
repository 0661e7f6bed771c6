package queue

import (
	"testing"
	"time"
)

// Figures read every second that the server refreshes every few: each keeps
// the time it was first read, and says it may have changed just after the
// read before that showed the old ones; figures at rest longer than Hold
// are dated anew.
func TestUnchangedDatesFiguresByTheirChange(t *testing.T) {
	t0 := time.Unix(1000, 0)
	sec := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	u := Unchanged[string, int]{Hold: 10 * time.Second}
	for _, tc := range []struct {
		read, v              int
		wantFirst, wantEarly int // -1: zero
	}{
		{0, 5, 0, -1},   // first seen: no earlier read tells
		{1, 5, 0, -1},   // unchanged
		{2, 5, 0, -1},   // unchanged
		{3, 9, 3, 2},    // changed after the read at 2
		{4, 9, 3, 2},    // unchanged
		{14, 9, 14, -1}, // at rest past Hold: dated anew
		{15, 7, 15, 14},
	} {
		first, early := u.Since("q", tc.v, sec(tc.read))
		wantEarly := time.Time{}
		if tc.wantEarly >= 0 {
			wantEarly = sec(tc.wantEarly)
		}
		if !first.Equal(sec(tc.wantFirst)) || !early.Equal(wantEarly) {
			t.Errorf("read at %d s of %d: first %v, earliest %v; want %v, %v", tc.read, tc.v, first.Sub(t0), early, sec(tc.wantFirst).Sub(t0), wantEarly)
		}
	}
}
