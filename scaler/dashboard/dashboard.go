// Package dashboard owns the controller's built-in page: a bounded history
// of each member's decisions and the recent scale events, and the handler
// that serves the page (no external assets) and its /api/state.
package dashboard

import (
	_ "embed"
	"encoding/json"
	"net/http"
)

// StateSource gives the state the page plots; callers must not modify it.
type StateSource interface {
	State() *State
}

// Viewer decides what a request may see of a state with members in the
// given namespaces: keep tells which namespaces (nil: all). An error
// answers the request instead (its status from Deny).
type Viewer func(r *http.Request, namespaces []string) (keep func(namespace string) bool, err error)

// Deny answers a request a Viewer refused.
type Deny func(w http.ResponseWriter, err error)

//go:embed dashboard.html
var dashboardHTML []byte

// Dashboard serves a page that plots each group's backlog against its target
// and each member's replicas, live, with the recent scale events. The page
// has no external assets; it polls api/state every second. With a Viewer,
// api/state holds only what it lets the request see.
func Dashboard(src StateSource, view Viewer, deny Deny) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
		_, _ = w.Write(dashboardHTML) // a failed write means the client left
	})
	mux.HandleFunc("GET /api/state", func(w http.ResponseWriter, r *http.Request) {
		st := src.State()
		if view != nil {
			keep, err := view(r, st.Namespaces())
			if err != nil {
				deny(w, err)
				return
			}
			if keep != nil {
				st = st.Filter(keep)
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		_ = json.NewEncoder(w).Encode(st) // a failed write means the client left
	})
	return mux
}
