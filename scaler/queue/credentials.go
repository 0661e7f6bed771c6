package queue

import (
	"context"
	"net/http"

	"github.com/microscaling/microscaling/annotations"
)

// Credentials are what a queue is read with, from the Secret its
// Deployment names (microscaling.com/queue-secret). They are never logged
// nor put in an error.
type Credentials struct {
	Username, Password string
	Token              string // a bearer token, for HTTP sources
}

// CredentialSource gives the credentials in a Secret ("namespace/name").
type CredentialSource interface {
	Credentials(ctx context.Context, secret string) (Credentials, error)
}

// Fixed is a CredentialSource of fixed credentials by qualified Secret
// name ("namespace/name"): for tests, and for anything that has them
// from elsewhere.
type Fixed map[string]Credentials

// Credentials returns the credentials of secret, or a class saying there
// are none.
func (f Fixed) Credentials(_ context.Context, secret string) (Credentials, error) {
	c, ok := f[secret]
	if !ok {
		return Credentials{}, Class("no such Secret")
	}
	return c, nil
}

// ErrNoSecrets: a queue names a Secret, and the controller does not read
// Secrets.
const ErrNoSecrets = Class("microscaling.com/queue-secret is set, and the controller does not read Secrets (installed without --queue-secrets)")

// CredentialsFor gives q's credentials: none when it names no Secret.
func (f *Fetcher) CredentialsFor(ctx context.Context, q annotations.QueueRef) (Credentials, error) {
	if q.Secret == "" {
		return Credentials{}, nil
	}
	if f.Credentials == nil {
		return Credentials{}, ErrNoSecrets
	}
	return f.Credentials.Credentials(ctx, q.Secret)
}

// Authorize adds c to an HTTP request: a bearer token, else basic auth.
func (c Credentials) Authorize(req *http.Request) {
	switch {
	case c.Token != "":
		req.Header.Set("Authorization", "Bearer "+c.Token)
	case c.Username != "" || c.Password != "":
		req.SetBasicAuth(c.Username, c.Password)
	}
}
