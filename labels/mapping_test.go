package labels

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestDerive(t *testing.T) {
	digest := "sha256:abc"
	tests := []struct {
		name         string
		existing     map[string]string
		labels       map[string]string
		want         map[string]string // microscaling.com/* keys only
		wantProblems []string          // substrings, one per problem, in order
	}{
		{
			name: "contract and legacy keys map",
			labels: map[string]string{"com.microscaling.priority": "2", "com.microscaling.max-containers": "8",
				"com.microscaling.max-delta": "3", "com.microscaling.rule": "remainder"},
			want: map[string]string{"microscaling.com/priority": "2", "microscaling.com/max-replicas": "8",
				"microscaling.com/max-delta": "3", "microscaling.com/rule": "remainder"},
		},
		{
			name:     "an image may not pick the queue address nor force replicas",
			existing: map[string]string{"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "2"},
			labels: map[string]string{"com.microscaling.queue": "nsq://169.254.169.254:80/t/c", "com.microscaling.min-replicas": "50",
				"com.microscaling.min-containers": "50"},
			want:         map[string]string{},
			wantProblems: []string{"com.microscaling.min-containers", "com.microscaling.min-replicas", "com.microscaling.queue"},
		},
		{
			name:     "an image can carry its wait target",
			existing: map[string]string{"microscaling.com/queue": "nsq://nsq:4151/t/c", "microscaling.com/max-replicas": "5"},
			labels:   map[string]string{"com.microscaling.target-wait": "3s"},
			want:     map[string]string{"microscaling.com/target-wait": "3s"},
		},
		{
			name:         "an invalid wait target is not copied",
			existing:     map[string]string{"microscaling.com/queue": "nsq://nsq:4151/t/c", "microscaling.com/max-replicas": "5", "microscaling.com/target-queue-length": "5"},
			labels:       map[string]string{"com.microscaling.target-wait": "soon"},
			want:         map[string]string{},
			wantProblems: []string{"target-wait"},
		},
		{
			name:     "the user's annotations win",
			existing: map[string]string{"microscaling.com/max-replicas": "4", "microscaling.com/rule": "remainder"},
			labels:   map[string]string{"com.microscaling.max-containers": "50", "com.microscaling.priority": "3"},
			want:     map[string]string{"microscaling.com/priority": "3"},
		},
		{
			name:   "is-scalable=false pauses",
			labels: map[string]string{"com.microscaling.is-scalable": "false", "com.microscaling.rule": "remainder", "com.microscaling.max-replicas": "2"},
			want:   map[string]string{"microscaling.com/paused": "true", "microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "2"},
		},
		{
			name:         "invalid scaling values are not copied",
			existing:     map[string]string{"microscaling.com/rule": "remainder"},
			labels:       map[string]string{"com.microscaling.max-replicas": "-5", "com.microscaling.priority": "urgent", "com.microscaling.scale-down-delay": "1m"},
			want:         map[string]string{"microscaling.com/scale-down-delay": "1m"},
			wantProblems: []string{"priority", "max-replicas"},
		},
		{
			name:         "unknown and forbidden keys are not copied",
			existing:     map[string]string{"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "2"},
			labels:       map[string]string{"com.microscaling.sync-labels": "true", "com.microscaling.paused": "true", "com.microscaling.evil/../x": "1", "com.microscaling.typo": "1"},
			want:         map[string]string{},
			wantProblems: []string{"com.microscaling.evil/../x", "com.microscaling.paused", "com.microscaling.sync-labels", "com.microscaling.typo"},
		},
		{
			name:         "oversized values are not copied",
			existing:     map[string]string{"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "2"},
			labels:       map[string]string{"com.microscaling.rule": strings.Repeat("a", 300), "org.opencontainers.image.title": strings.Repeat("b", 300)},
			want:         map[string]string{},
			wantProblems: []string{"longer than 256", "longer than 256"},
		},
		{
			name:   "labels outside the prefixes are never written",
			labels: map[string]string{"kubernetes.io/evil": "x", "microscaling.com/max-replicas": "9", "maintainer": "me"},
			want:   map[string]string{},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			existing := tc.existing
			if existing == nil {
				existing = map[string]string{}
			}
			got, _, problems := Derive(existing, []Image{{Container: "app", Digest: digest, Labels: tc.labels}}, DefaultPrefixes, nil)
			ours := map[string]string{}
			for k, v := range got {
				switch {
				case strings.HasPrefix(k, "microscaling.com/"):
					ours[k] = v
				case k == ImageLabelsPrefix+"app", k == SyncedKey:
				default:
					t.Errorf("wrote %s outside the allowed prefixes", k)
				}
			}
			if !reflect.DeepEqual(ours, tc.want) {
				t.Errorf("annotations = %v, want %v", ours, tc.want)
			}
			if len(problems) != len(tc.wantProblems) {
				t.Fatalf("problems = %v, want %d", problems, len(tc.wantProblems))
			}
			for i, p := range problems {
				if !strings.Contains(p.String(), tc.wantProblems[i]) {
					t.Errorf("problem %d = %q, want it to say %q", i, p, tc.wantProblems[i])
				}
			}
		})
	}
}

func TestDeriveImageLabels(t *testing.T) {
	got, _, _ := Derive(map[string]string{}, []Image{
		{Container: "web", Digest: "sha256:1", Labels: map[string]string{"org.opencontainers.image.title": "Web", "org.label-schema.vcs-ref": "abc", "other": "x"}},
		{Container: "side", Digest: "sha256:2", Labels: nil},
	}, DefaultPrefixes, nil)
	var web struct {
		Digest string            `json:"digest"`
		Labels map[string]string `json:"labels"`
	}
	if err := json.Unmarshal([]byte(got[ImageLabelsPrefix+"web"]), &web); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"org.opencontainers.image.title": "Web", "org.label-schema.vcs-ref": "abc"}
	if web.Digest != "sha256:1" || !reflect.DeepEqual(web.Labels, want) {
		t.Errorf("web = %+v, want digest sha256:1 and %v", web, want)
	}
	if got[ImageLabelsPrefix+"side"] != `{"digest":"sha256:2","labels":{}}` {
		t.Errorf("side = %q", got[ImageLabelsPrefix+"side"])
	}
	// Nothing changed: nothing to patch.
	again, _, _ := Derive(got, []Image{
		{Container: "web", Digest: "sha256:1", Labels: map[string]string{"org.opencontainers.image.title": "Web", "org.label-schema.vcs-ref": "abc", "other": "x"}},
		{Container: "side", Digest: "sha256:2"},
	}, DefaultPrefixes, nil)
	if len(again) != 0 {
		t.Errorf("second derive patches %v, want nothing", again)
	}
}

func TestDeriveRepushedImage(t *testing.T) {
	img := func(l map[string]string) []Image { return []Image{{Container: "app", Digest: "sha256:1", Labels: l}} }
	base := map[string]string{"microscaling.com/rule": "remainder", "microscaling.com/max-replicas": "9"}
	set, _, _ := Derive(base, img(map[string]string{"com.microscaling.priority": "2", "com.microscaling.max-delta": "1"}), nil, nil)
	ann := map[string]string{}
	for k, v := range base {
		ann[k] = v
	}
	for k, v := range set {
		ann[k] = v
	}
	// The user edits max-delta; the image is re-pushed with new values and
	// without max-delta... and with a new max-delta again: the user's edit wins.
	ann["microscaling.com/max-delta"] = "4"
	set, remove, _ := Derive(ann, img(map[string]string{"com.microscaling.priority": "5", "com.microscaling.max-delta": "2"}), nil, nil)
	if set["microscaling.com/priority"] != "5" {
		t.Errorf("re-pushed priority not picked up: %v", set)
	}
	if _, ok := set["microscaling.com/max-delta"]; ok {
		t.Errorf("overwrote the user's max-delta: %v", set)
	}
	for k, v := range set {
		ann[k] = v
	}
	// The label goes away: the value it set goes too.
	set, remove, _ = Derive(ann, img(map[string]string{}), nil, nil)
	if len(remove) != 1 || remove[0] != "microscaling.com/priority" {
		t.Errorf("remove = %v (set %v), want microscaling.com/priority", remove, set)
	}
}

func TestKeychainFromSecrets(t *testing.T) {
	good := &corev1.Secret{Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{
		corev1.DockerConfigJsonKey: []byte(`{"auths":{"https://127.0.0.1:5000/v1/":{"auth":"dXNlcjpwYXNz"}}}`)}}
	k, err := KeychainFromSecrets([]*corev1.Secret{good})
	if err != nil {
		t.Fatal(err)
	}
	if a := k.auths["127.0.0.1:5000"]; a.Username != "user" || a.Password != "pass" {
		t.Errorf("auth = %+v, want user/pass for 127.0.0.1:5000", a)
	}
	bad := &corev1.Secret{Type: corev1.SecretTypeDockerConfigJson, Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths": "sekrit-token"`)}}
	bad.Name, bad.Namespace = "pull", "ns"
	_, err = KeychainFromSecrets([]*corev1.Secret{bad})
	if err == nil || !strings.Contains(err.Error(), "ns/pull") || strings.Contains(err.Error(), "sekrit") {
		t.Errorf("err = %v, want it to name ns/pull and not show the content", err)
	}
}

// The keys images may set are the operator's: by default not queue, group
// nor min-replicas; --image-label-keys may allow them; sync-labels and
// paused never.
func TestImageLabelKeys(t *testing.T) {
	img := []Image{{Container: "app", Digest: "sha256:1", Labels: map[string]string{
		"com.microscaling.group": "shared", "com.microscaling.queue": "nsq://nsq:4151/t/c", "com.microscaling.priority": "2"}}}
	set, _, problems := Derive(map[string]string{}, img, nil, nil)
	if set["microscaling.com/group"] != "" || set["microscaling.com/queue"] != "" || set["microscaling.com/priority"] != "2" || len(problems) != 2 {
		t.Errorf("default keys: set %v, problems %v; want only priority, group and queue refused", set, problems)
	}
	keys, err := ParseKeys("queue, microscaling.com/group,priority")
	if err != nil {
		t.Fatal(err)
	}
	set, _, problems = Derive(map[string]string{}, img, nil, keys)
	if set["microscaling.com/group"] != "shared" || set["microscaling.com/queue"] != "nsq://nsq:4151/t/c" || len(problems) != 0 {
		t.Errorf("operator's keys: set %v, problems %v", set, problems)
	}
	for _, bad := range []string{"paused", "sync-labels", "max-replica"} {
		if _, err := ParseKeys(bad); err == nil || !strings.Contains(err.Error(), bad) {
			t.Errorf("ParseKeys(%q) = %v, want an error naming it", bad, err)
		}
	}
}
