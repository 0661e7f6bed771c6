package metrics

import "testing"

func TestAPIResource(t *testing.T) {
	tests := []struct{ path, want string }{
		{"/apis/apps/v1/namespaces/demo/deployments/consumer/scale", "deployments/scale"},
		{"/apis/apps/v1/namespaces/demo/deployments", "deployments"},
		{"/api/v1/namespaces/demo/events", "events"},
		{"/api/v1/namespaces/demo/events/x", "events"},
		{"/api/v1/nodes", "nodes"},
		{"/apis/coordination.k8s.io/v1/namespaces/ms/leases/microscaling", "leases"},
		{"/api/v1/namespaces/demo", "namespaces"},
		{"/healthz", "other"},
	}
	for _, tc := range tests {
		t.Run(tc.path, func(t *testing.T) {
			if got := apiResource(tc.path); got != tc.want {
				t.Errorf("apiResource(%q) = %q, want %q", tc.path, got, tc.want)
			}
		})
	}
}
