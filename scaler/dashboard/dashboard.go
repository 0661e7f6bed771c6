// Package dashboard owns the controller's built-in page: a bounded history
// of each member's decisions and the recent scale events, and the handler
// that serves the page (no external assets) and its /api/state.
package dashboard

import (
	_ "embed"
	"encoding/json"
	"net/http"
)

// StateSource gives the state the page plots.
type StateSource interface {
	State() State
}

//go:embed dashboard.html
var dashboardHTML []byte

// Dashboard serves a page that plots each group's backlog against its target
// and each member's replicas, live, with the recent scale events. The page
// has no external assets; it polls api/state every second.
func Dashboard(src StateSource) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
		_, _ = w.Write(dashboardHTML) // a failed write means the client left
	})
	mux.HandleFunc("GET /api/state", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(src.State()) // a failed write means the client left
	})
	return mux
}
