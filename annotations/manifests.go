package annotations

import (
	"errors"
	"fmt"
	"io"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
)

// Problem is one mistake in a manifest's microscaling.com/* annotations.
type Problem struct {
	Source string // the file, or "-" for standard input
	Object string // Kind namespace/name
	Err    error
}

func (p Problem) String() string { return fmt.Sprintf("%s: %s: %v", p.Source, p.Object, p.Err) }

// CheckManifests reads a stream of manifests (multi-document YAML or JSON,
// v1 Lists, kustomize or helm template output) and checks every object
// that carries a microscaling.com/* annotation with Parse: the problems the
// controller would report as Events, before they land. It returns the
// number of objects checked; an error only when the stream cannot be read.
func CheckManifests(r io.Reader, source string) (checked int, problems []Problem, err error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(r, 4096)
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
			return checked, problems, nil
		} else if err != nil {
			return checked, problems, fmt.Errorf("%s: reading manifests: %w", source, err)
		}
		if obj == nil {
			continue // an empty document
		}
		for _, u := range flatten(&unstructured.Unstructured{Object: obj}) {
			template, _, _ := unstructured.NestedStringMap(u.Object, "spec", "template", "metadata", "annotations")
			onObject, onTemplate := carries(u.GetAnnotations()), carries(template)
			if !onObject && !onTemplate {
				continue
			}
			checked++
			what := u.GetKind() + " " + strings.TrimPrefix(u.GetNamespace()+"/"+u.GetName(), "/")
			if onTemplate {
				// A chart's podAnnotations land here: on the pods, where
				// the controller never looks.
				problems = append(problems, Problem{source, what, errors.New(
					"microscaling.com/* annotations on the pod template (spec.template.metadata.annotations) are not read: put them on the object's own metadata.annotations")})
			}
			if !onObject {
				continue
			}
			if u.GetKind() != "Deployment" || !strings.HasPrefix(u.GetAPIVersion(), "apps/") {
				problems = append(problems, Problem{source, what, errors.New("microscaling.com/* annotations act only on apps/v1 Deployments")})
				continue
			}
			if !Managed(u.GetAnnotations()) {
				problems = append(problems, Problem{source, what, fmt.Errorf(
					"microscaling.com/* annotations without %s or %s: the Deployment is not managed and they are not read", Queue, Rule)})
				continue
			}
			if _, err := Parse(u.GetName(), u.GetAnnotations()); err != nil {
				for _, fe := range FieldErrors(err) {
					problems = append(problems, Problem{source, what, fe})
				}
			}
		}
	}
}

// flatten returns u, or the items of a List.
func flatten(u *unstructured.Unstructured) []*unstructured.Unstructured {
	if !u.IsList() {
		return []*unstructured.Unstructured{u}
	}
	l, err := u.ToList()
	if err != nil {
		return []*unstructured.Unstructured{u}
	}
	out := make([]*unstructured.Unstructured, 0, len(l.Items))
	for i := range l.Items {
		out = append(out, flatten(&l.Items[i])...)
	}
	return out
}

func carries(ann map[string]string) bool {
	for k := range ann {
		if strings.HasPrefix(k, Prefix) {
			return true
		}
	}
	return false
}
