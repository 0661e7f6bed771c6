package labels

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	corev1 "k8s.io/api/core/v1"
)

// KeychainFromSecrets reads kubernetes.io/dockerconfigjson (and legacy
// dockercfg) secrets. Later secrets do not override earlier ones, as in the
// kubelet's order. Errors name the secret, never its content.
func KeychainFromSecrets(secrets []*corev1.Secret) (*Keychain, error) {
	k := &Keychain{auths: map[string]authn.AuthConfig{}}
	for _, s := range secrets {
		var auths map[string]authn.AuthConfig
		switch s.Type {
		case corev1.SecretTypeDockerConfigJson:
			var cfg struct {
				Auths map[string]authn.AuthConfig `json:"auths"`
			}
			if err := json.Unmarshal(s.Data[corev1.DockerConfigJsonKey], &cfg); err != nil {
				return nil, fmt.Errorf("secret %s/%s: %s is not valid JSON", s.Namespace, s.Name, corev1.DockerConfigJsonKey)
			}
			auths = cfg.Auths
		case corev1.SecretTypeDockercfg:
			if err := json.Unmarshal(s.Data[corev1.DockerConfigKey], &auths); err != nil {
				return nil, fmt.Errorf("secret %s/%s: %s is not valid JSON", s.Namespace, s.Name, corev1.DockerConfigKey)
			}
		default:
			return nil, fmt.Errorf("secret %s/%s has type %s, want %s", s.Namespace, s.Name, s.Type, corev1.SecretTypeDockerConfigJson)
		}
		for host, a := range auths {
			if a.Auth != "" && a.Username == "" {
				raw, err := base64.StdEncoding.DecodeString(a.Auth)
				if err != nil {
					return nil, fmt.Errorf("secret %s/%s: auth for %s is not base64", s.Namespace, s.Name, host)
				}
				a.Username, a.Password, _ = strings.Cut(string(raw), ":")
				a.Auth = ""
			}
			host = registryHost(host)
			if _, ok := k.auths[host]; !ok {
				k.auths[host] = a
			}
		}
	}
	return k, nil
}

// registryHost turns "https://index.docker.io/v1/" or "127.0.0.1:5000" into
// the host name go-containerregistry uses.
func registryHost(s string) string {
	s = strings.TrimPrefix(strings.TrimPrefix(s, "https://"), "http://")
	s, _, _ = strings.Cut(s, "/")
	if s == "docker.io" || s == "registry-1.docker.io" {
		return "index.docker.io"
	}
	return s
}

func sortedKeys[V any](m map[string]V) []string { return slices.Sorted(maps.Keys(m)) }
