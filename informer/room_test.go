package informer

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestFits(t *testing.T) {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{"pool": "batch", "cpus": "8"}},
		Spec:       corev1.NodeSpec{Taints: []corev1.Taint{{Key: "dedicated", Value: "batch", Effect: corev1.TaintEffectNoSchedule}}},
	}
	tolerate := []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "batch", Effect: corev1.TaintEffectNoSchedule}}
	affinity := func(terms ...corev1.NodeSelectorTerm) *corev1.Affinity {
		return &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: terms}}}
	}
	expr := func(key string, op corev1.NodeSelectorOperator, values ...string) corev1.NodeSelectorTerm {
		return corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{{Key: key, Operator: op, Values: values}}}
	}
	tests := []struct {
		name string
		spec corev1.PodSpec
		want bool
	}{
		{name: "untolerated taint", spec: corev1.PodSpec{}, want: false},
		{name: "tolerated taint", spec: corev1.PodSpec{Tolerations: tolerate}, want: true},
		{name: "nodeSelector matches", spec: corev1.PodSpec{Tolerations: tolerate, NodeSelector: map[string]string{"pool": "batch"}}, want: true},
		{name: "nodeSelector differs", spec: corev1.PodSpec{Tolerations: tolerate, NodeSelector: map[string]string{"pool": "web"}}, want: false},
		{name: "affinity In", spec: corev1.PodSpec{Tolerations: tolerate, Affinity: affinity(expr("pool", corev1.NodeSelectorOpIn, "batch", "x"))}, want: true},
		{name: "affinity NotIn", spec: corev1.PodSpec{Tolerations: tolerate, Affinity: affinity(expr("pool", corev1.NodeSelectorOpNotIn, "batch"))}, want: false},
		{name: "affinity Gt", spec: corev1.PodSpec{Tolerations: tolerate, Affinity: affinity(expr("cpus", corev1.NodeSelectorOpGt, "4"))}, want: true},
		{name: "affinity terms are ORed", spec: corev1.PodSpec{Tolerations: tolerate, Affinity: affinity(expr("pool", corev1.NodeSelectorOpIn, "web"), expr("pool", corev1.NodeSelectorOpExists))}, want: true},
		{name: "affinity on node name", spec: corev1.PodSpec{Tolerations: tolerate, Affinity: affinity(corev1.NodeSelectorTerm{
			MatchFields: []corev1.NodeSelectorRequirement{{Key: "metadata.name", Operator: corev1.NodeSelectorOpIn, Values: []string{"n2"}}}})}, want: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := fits(&tc.spec, node); got != tc.want {
				t.Errorf("fits = %v, want %v", got, tc.want)
			}
		})
	}
}
