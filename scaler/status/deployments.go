package status

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/pager"

	"github.com/microscaling/microscaling/annotations"
	"github.com/microscaling/microscaling/scaler/condition"
)

// Member is one managed Deployment as its own object tells it: its
// annotations and the condition the controller keeps on it.
type Member struct {
	Namespace string `json:"namespace"`
	Group     string `json:"group"`
	Name      string `json:"name"`
	Rule      string `json:"rule"`
	Priority  int32  `json:"priority"`
	Replicas  int32  `json:"replicas"`
	Ready     int32  `json:"ready"`
	// Status, Reason, Message and Since are the microscaling.com/Scaling
	// condition's; empty when the controller has not written it (not yet
	// decided, or not running).
	Status  string      `json:"status,omitempty"`
	Reason  string      `json:"reason,omitempty"`
	Message string      `json:"message,omitempty"`
	Since   metav1.Time `json:"since,omitzero"`
	// Problem is set when the annotations do not parse.
	Problem string `json:"problem,omitempty"`
}

// Members lists the managed Deployments of namespace (every namespace
// when empty) that the client's user may list, in pages, sorted by
// namespace, group and name. Only the API server is asked, as the user:
// RBAC decides what each person sees.
func Members(ctx context.Context, client kubernetes.Interface, namespace string) ([]Member, error) {
	var out []Member
	p := pager.New(func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
		return client.AppsV1().Deployments(namespace).List(ctx, opts)
	})
	err := p.EachListItem(ctx, metav1.ListOptions{}, func(o runtime.Object) error {
		d, ok := o.(*appsv1.Deployment)
		if !ok || !annotations.Managed(d.Annotations) {
			return nil
		}
		out = append(out, member(d))
		return nil
	})
	if err != nil {
		where := "namespace " + namespace
		if namespace == "" {
			where = "all namespaces"
		}
		return nil, fmt.Errorf("listing Deployments in %s: %w", where, err)
	}
	slices.SortFunc(out, func(a, b Member) int {
		return strings.Compare(a.Namespace+"\x00"+a.Group+"\x00"+a.Name, b.Namespace+"\x00"+b.Group+"\x00"+b.Name)
	})
	return out, nil
}

func member(d *appsv1.Deployment) Member {
	m := Member{Namespace: d.Namespace, Name: d.Name, Replicas: annotations.Replicas(d.Spec.Replicas), Ready: d.Status.ReadyReplicas}
	spec, err := annotations.Parse(d.Name, d.Annotations)
	if err != nil {
		m.Problem = "invalid microscaling.com/ annotations (kubectl microscaling validate tells which)"
	}
	m.Group, m.Rule, m.Priority = spec.Group, string(spec.Rule), spec.Priority
	if c := condition.Find(d); c != nil {
		m.Status, m.Reason, m.Message, m.Since = string(c.Status), c.Reason, c.Message, c.LastTransitionTime
	}
	return m
}

// PrintMembers writes ms as a table, the NAMESPACE column only when
// allNamespaces; only the members of group when it is set.
func PrintMembers(w io.Writer, ms []Member, allNamespaces bool, group string, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := "GROUP\tDEPLOYMENT\tRULE\tPRIORITY\tREPLICAS\tREADY\tSCALING\tREASON\tSINCE\tMESSAGE"
	if allNamespaces {
		head = "NAMESPACE\t" + head
	}
	fmt.Fprintln(tw, head)
	n := 0
	for _, m := range ms {
		if group != "" && m.Group != group {
			continue
		}
		n++
		if allNamespaces {
			fmt.Fprintf(tw, "%s\t", m.Namespace)
		}
		since, msg := "-", or(m.Message, "-")
		if !m.Since.IsZero() {
			since = duration.HumanDuration(now.Sub(m.Since.Time))
		}
		if m.Problem != "" {
			msg = m.Problem
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\t%s\t%s\n", or(m.Group, "-"), m.Name, or(m.Rule, "-"), m.Priority,
			m.Replicas, m.Ready, or(m.Status, "Unknown"), or(m.Reason, "-"), since, msg)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if n == 0 {
		_, err := fmt.Fprintln(w, "no managed Deployments here that you may read")
		return err
	}
	return nil
}
