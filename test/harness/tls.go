package harness

import "crypto/tls"

// insecureTLS is for the health checks of the controller-manager and the
// scheduler, which serve self-signed certificates on 127.0.0.1.
func insecureTLS() *tls.Config { return &tls.Config{InsecureSkipVerify: true} } //nolint:gosec // local health probe only
