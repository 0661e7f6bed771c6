// Package scaler decides and applies replica counts for groups of
// Deployments that share capacity by priority.
//
// The decision (queue rule, rate estimation, priority allocation) is pure:
// it takes plain values and a time, and returns plain values. The I/O around
// it (queue readers, /scale writes, Events, each member's condition on its
// Deployment, metrics) sits behind small interfaces so that the loop is
// tested against real servers and the decision is tested with tables.
package scaler
