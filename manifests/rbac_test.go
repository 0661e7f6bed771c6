package manifests

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	rbacv1 "k8s.io/api/rbac/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// The README's table of what the controller's identity may do is the
// rules of manifests/install/rbac.yaml, row for row (-update rewrites it):
// a rule added to the manifests without the README fails here.
func TestREADMEListsTheRBAC(t *testing.T) {
	b, err := os.ReadFile("install/rbac.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var table strings.Builder
	table.WriteString("| role | where | API group | resources | names | verbs |\n|---|---|---|---|---|---|\n")
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(b), 4096)
	for {
		var obj struct {
			Kind     string
			Metadata struct{ Name, Namespace string }
			Rules    []rbacv1.PolicyRule
		}
		if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("install/rbac.yaml: %v", err)
		}
		if obj.Kind != "ClusterRole" && obj.Kind != "Role" {
			continue
		}
		where := "cluster"
		if obj.Kind == "Role" {
			where = "namespace `" + obj.Metadata.Namespace + "`"
		}
		for _, r := range obj.Rules {
			group, resources := strings.Join(r.APIGroups, ", "), strings.Join(r.Resources, ", ")
			switch {
			case len(r.NonResourceURLs) > 0:
				group, resources = "(URL)", strings.Join(r.NonResourceURLs, ", ")
			case group == "":
				group = "core"
			}
			fmt.Fprintf(&table, "| %s `%s` | %s | %s | %s | %s | %s |\n", obj.Kind, obj.Metadata.Name, where, group, resources,
				or(strings.Join(r.ResourceNames, ", "), "any"), strings.Join(r.Verbs, ", "))
		}
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const begin, end = "<!-- rbac: generated from manifests/install/rbac.yaml by TestREADMEListsTheRBAC -->\n", "<!-- /rbac -->"
	i, j := bytes.Index(readme, []byte(begin)), bytes.Index(readme, []byte(end))
	if i < 0 || j < i {
		t.Fatalf("README.md has no %q ... %q section", strings.TrimSpace(begin), end)
	}
	got := string(readme[i+len(begin) : j])
	if got == table.String() {
		return
	}
	if *update {
		out := append(append(append([]byte{}, readme[:i+len(begin)]...), table.String()...), readme[j:]...)
		if err := os.WriteFile("../README.md", out, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Errorf("README.md's RBAC table is not the rules of install/rbac.yaml (go test ./manifests -update):\n%s\nwant:\n%s", got, table.String())
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
