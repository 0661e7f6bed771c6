// Package secret reads queue credentials from the Secrets that Deployments
// name (microscaling.com/queue-secret): one GET by name, only while a
// queue uses it, cached for a while, never a list; only the username,
// password and token keys are kept, each bounded. What a Secret holds
// never reaches an error.
package secret

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"

	"github.com/microscaling/microscaling/scaler/queue"
)

// Reader is a queue.CredentialSource over the API server.
type Reader struct {
	Client kubernetes.Interface
	// TTL is how long a Secret read is used before it is read again
	// (DefaultTTL when 0); a Secret no queue used for queue.ForgetAfter
	// is dropped.
	TTL   time.Duration
	Clock clock.PassiveClock

	mu    sync.Mutex
	cache map[string]entry
}

type entry struct {
	creds      queue.Credentials
	err        error
	read, used time.Time
}

// DefaultTTL is how long a Secret's credentials are used before they are
// read again.
const DefaultTTL = 30 * time.Second

// MaxValueBytes bounds each credential value.
const MaxValueBytes = 4 << 10

// maxSecrets bounds the Secrets remembered.
const maxSecrets = 4096

const (
	errNotFound  = queue.Class("the queue-secret Secret does not exist in the Deployment's namespace")
	errForbidden = queue.Class("the controller may not read the queue-secret Secret (RBAC)")
	errTooLong   = queue.Class("a credential in the queue-secret Secret is longer than 4 KiB")
	errEmpty     = queue.Class("the queue-secret Secret holds none of username, password, token")
	errUnread    = queue.Class("the queue-secret Secret could not be read")
)

// Credentials gives the credentials of Secret "namespace/name".
func (r *Reader) Credentials(ctx context.Context, name string) (queue.Credentials, error) {
	now := r.now()
	r.mu.Lock()
	if r.cache == nil {
		r.cache = map[string]entry{}
	}
	e, ok := r.cache[name]
	ttl := r.TTL
	if ttl <= 0 {
		ttl = DefaultTTL
	}
	if ok && now.Sub(e.read) < ttl {
		e.used = now
		r.cache[name] = e
		r.mu.Unlock()
		return e.creds, e.err
	}
	r.mu.Unlock()

	creds, err := r.get(ctx, name)
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, old := range r.cache {
		if now.Sub(old.used) > queue.ForgetAfter {
			delete(r.cache, k)
		}
	}
	if _, ok := r.cache[name]; ok || len(r.cache) < maxSecrets {
		r.cache[name] = entry{creds: creds, err: err, read: now, used: now}
	}
	return creds, err
}

func (r *Reader) get(ctx context.Context, name string) (queue.Credentials, error) {
	ns, n, ok := strings.Cut(name, "/")
	if !ok {
		return queue.Credentials{}, fmt.Errorf("%w: %q is not namespace/name", errUnread, name)
	}
	s, err := r.Client.CoreV1().Secrets(ns).Get(ctx, n, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return queue.Credentials{}, errNotFound
	case apierrors.IsForbidden(err):
		return queue.Credentials{}, errForbidden
	case err != nil:
		return queue.Credentials{}, fmt.Errorf("%w: %w", errUnread, err)
	}
	var c queue.Credentials
	for key, dst := range map[string]*string{"username": &c.Username, "password": &c.Password, "token": &c.Token} {
		v := s.Data[key]
		if len(v) > MaxValueBytes {
			return queue.Credentials{}, errTooLong
		}
		*dst = string(v)
	}
	if c == (queue.Credentials{}) {
		return queue.Credentials{}, errEmpty
	}
	return c, nil
}

func (r *Reader) now() time.Time {
	if r.Clock == nil {
		return time.Now()
	}
	return r.Clock.Now()
}
