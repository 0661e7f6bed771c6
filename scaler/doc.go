// Package scaler is the tick loop: each tick it takes the informer's plain
// snapshot and the queue readings (gather), calls policy.DecideGroup for
// every group (decide), and hands the answer to scaler/execute, the one
// writer (act). It keeps what it remembers of each member between ticks:
// the last good spec, the decision state, the gauges and the history.
//
// Its files follow those jobs: controller.go (the tick), queues.go (what a
// tick reads, the per-namespace host cap, ready-first ordering),
// members.go (each member's state: specs taken in, releases, other
// autoscalers), decide.go (one group's gather, decide and act), record.go
// (gauges and the dashboard's history).
//
// The decision is pure (scaler/policy); the I/O around it (the snapshot,
// queue readers, the executor, metrics) sits behind small interfaces so
// that the loop is tested against real servers and the decision with
// tables.
package scaler
