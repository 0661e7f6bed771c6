package harness

import (
	"context"
	"testing"
	"time"
)

// StartT starts a stack for one test and stops it when the test ends,
// whether it passed, failed or panicked; a failed test gets the tail of every
// process log.
func StartT(t testing.TB, opts Options) *Stack {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	opts.Log = t.Logf
	s, err := Start(ctx, opts)
	if err != nil {
		t.Fatalf("starting stack: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("stack logs:\n%s", s.Logs(2000))
		}
		s.Stop()
	})
	return s
}
