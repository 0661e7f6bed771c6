// Package labels makes image labels visible to Kubernetes: it reads each
// container image's Docker/OCI labels from its registry (cached by digest),
// maps com.microscaling.* labels to microscaling.com/* annotations (the
// user's own annotations always win), and exposes other labels under chosen
// prefixes as one image-labels.microscaling.com/<container> annotation.
// Labels are unsigned input, so only known keys with valid values are
// copied, sizes are capped, and nothing outside the two prefixes is written.
package labels

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/microscaling/microscaling/annotations"
)

const (
	// LabelPrefix starts the image labels that carry scaling rules.
	LabelPrefix = "com.microscaling."
	// ImageLabelsPrefix starts the per-container annotations of other labels.
	ImageLabelsPrefix = annotations.ImageLabelsPrefix
	// MaxLabelValue caps one copied label value.
	MaxLabelValue = 256
	// MaxImageLabelsJSON caps one image-labels annotation.
	MaxImageLabelsJSON = 8192
	// SyncedKey records which microscaling.com/* values came from labels, so
	// that a re-pushed image may change them while a user's edit still wins.
	SyncedKey = ImageLabelsPrefix + "synced"
)

// DefaultPrefixes are the label prefixes exposed per container by default.
var DefaultPrefixes = []string{"org.opencontainers.image.", "org.label-schema."}

// legacy maps the original engine's label names to the contract's keys.
var legacy = map[string]string{
	"min-containers": annotations.MinReplicas,
	"max-containers": annotations.MaxReplicas,
}

// DefaultKeys are the contract's keys an image may set unless the operator
// says otherwise. queue, group and min-replicas are not an image
// publisher's to choose by default: the first picks the address the
// controller reads, the second which Deployments share room and budget, the
// third forces replicas on every Deployment that runs the image.
var DefaultKeys = []string{
	annotations.Priority, annotations.Rule, annotations.TargetQueueLength, annotations.TargetWait,
	annotations.MaxReplicas, annotations.MaxDelta, annotations.ScaleDownDelay, annotations.GroupMaxReplicas,
}

// ParseKeys reads the keys images may set (names with or without the
// microscaling.com/ prefix, comma-separated). sync-labels is the user's
// switch and paused comes only through is-scalable: neither may be listed.
func ParseKeys(list string) (map[string]bool, error) {
	keys := map[string]bool{}
	for _, k := range strings.Split(list, ",") {
		k = strings.TrimSpace(k)
		if k == "" {
			continue
		}
		if !strings.HasPrefix(k, annotations.Prefix) {
			k = annotations.Prefix + k
		}
		if !slices.Contains(annotations.Keys, k) || k == annotations.SyncLabels || k == annotations.Paused {
			return nil, fmt.Errorf("image label key %q: not a key an image may set", strings.TrimPrefix(k, annotations.Prefix))
		}
		keys[k] = true
	}
	return keys, nil
}

func defaultKeys() map[string]bool {
	m := map[string]bool{}
	for _, k := range DefaultKeys {
		m[k] = true
	}
	return m
}

// Image is what was read of one container's image.
type Image struct {
	Container string
	Digest    string
	Labels    map[string]string
}

// Problem is one label that was not copied, and why.
type Problem struct {
	Container, Label, Value, Why string
}

func (p Problem) String() string {
	v := p.Value
	if len(v) > 64 {
		v = v[:64] + "..."
	}
	return fmt.Sprintf("container %s label %s=%q not copied: %s", p.Container, p.Label, v, p.Why)
}

// Derive returns the annotations to set on a Deployment whose annotations are
// existing and whose containers' images are imgs (in container order): only
// keys that differ from existing, none outside the two allowed prefixes. A
// key is the user's, and wins, unless SyncedKey shows that the label sync
// wrote its current value. remove lists earlier label values whose label is
// gone.
//
// keys are the contract's keys an image may set; nil: DefaultKeys.
func Derive(existing map[string]string, imgs []Image, prefixes []string, keys map[string]bool) (set map[string]string, remove []string, problems []Problem) {
	if keys == nil {
		keys = defaultKeys()
	}
	var synced map[string]string
	_ = json.Unmarshal([]byte(existing[SyncedKey]), &synced) // absent or mangled: nothing is ours
	user := map[string]string{}
	for k, v := range existing {
		if prev, ok := synced[k]; !ok || prev != v {
			user[k] = v
		}
	}
	fromLabels := map[string]string{}
	source := map[string]Problem{} // where each derived key came from
	for _, img := range imgs {
		for _, l := range slices.Sorted(maps.Keys(img.Labels)) {
			v := img.Labels[l]
			name, ok := strings.CutPrefix(l, LabelPrefix)
			if !ok {
				continue
			}
			p := Problem{Container: img.Container, Label: l, Value: v}
			key := annotations.Prefix + name
			if k, ok := legacy[name]; ok {
				key = k
			}
			if name == "is-scalable" {
				switch v {
				case "false":
					key, v = annotations.Paused, "true"
				case "true":
					continue
				default:
					p.Why = `want "true" or "false"`
					problems = append(problems, p)
					continue
				}
			} else if !keys[key] {
				p.Why = "not a key an image may set"
				problems = append(problems, p)
				continue
			}
			if len(v) > MaxLabelValue {
				p.Why = fmt.Sprintf("longer than %d bytes", MaxLabelValue)
				problems = append(problems, p)
				continue
			}
			if _, mine := user[key]; mine {
				continue // the user's annotation wins
			}
			if _, dup := fromLabels[key]; dup {
				p.Why = "an earlier container's image already set " + key
				problems = append(problems, p)
				continue
			}
			fromLabels[key] = v
			source[key] = p
		}
	}
	// Validate the result as a whole; drop the label-derived keys it blames.
	for len(fromLabels) > 0 {
		merged := maps.Clone(user)
		maps.Copy(merged, fromLabels)
		_, err := annotations.Parse("deployment", merged)
		blamed := false
		for _, fe := range annotations.FieldErrors(err) {
			if p, ok := source[fe.Key]; ok && fromLabels[fe.Key] != "" {
				p.Why = fe.Want
				problems = append(problems, p)
				delete(fromLabels, fe.Key)
				blamed = true
			}
		}
		if !blamed {
			break // what is left is valid, or the problems are the user's own
		}
	}
	out := map[string]string{}
	for k, v := range fromLabels {
		if existing[k] != v {
			out[k] = v
		}
	}
	for k := range synced {
		_, isUser := user[k]
		if _, still := fromLabels[k]; !still && !isUser && strings.HasPrefix(k, annotations.Prefix) {
			if _, ok := existing[k]; ok {
				remove = append(remove, k)
			}
		}
	}
	slices.Sort(remove)
	if b, err := json.Marshal(fromLabels); err == nil && existing[SyncedKey] != string(b) {
		out[SyncedKey] = string(b)
	}
	for _, img := range imgs {
		key := ImageLabelsPrefix + img.Container
		exposed := map[string]string{}
		for l, v := range img.Labels {
			if !hasAnyPrefix(l, prefixes) {
				continue
			}
			if len(v) > MaxLabelValue {
				problems = append(problems, Problem{Container: img.Container, Label: l, Value: v, Why: fmt.Sprintf("longer than %d bytes", MaxLabelValue)})
				continue
			}
			exposed[l] = v
		}
		b, err := json.Marshal(struct {
			Digest string            `json:"digest"`
			Labels map[string]string `json:"labels"`
		}{img.Digest, exposed})
		if err != nil || len(b) > MaxImageLabelsJSON {
			problems = append(problems, Problem{Container: img.Container, Label: strings.Join(prefixes, ","), Why: fmt.Sprintf("exposed labels exceed %d bytes", MaxImageLabelsJSON)})
			continue
		}
		if existing[key] != string(b) {
			out[key] = string(b)
		}
	}
	// Belt and braces: nothing outside the two prefixes, ever.
	maps.DeleteFunc(out, func(k, _ string) bool {
		return !annotations.Ours(k)
	})
	return out, remove, problems
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}
