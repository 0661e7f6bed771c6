package informer

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/microscaling/microscaling/scaler/policy"
)

func TestPodRequests(t *testing.T) {
	ctr := func(cpu, mem string) corev1.Container {
		return corev1.Container{Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
			corev1.ResourceCPU: resource.MustParse(cpu), corev1.ResourceMemory: resource.MustParse(mem)}}}
	}
	sidecar := func(cpu, mem string) corev1.Container {
		c := ctr(cpu, mem)
		always := corev1.ContainerRestartPolicyAlways
		c.RestartPolicy = &always
		return c
	}
	tests := []struct {
		name         string
		spec         corev1.PodSpec
		milli, bytes int64
	}{
		{name: "containers are summed", spec: corev1.PodSpec{Containers: []corev1.Container{ctr("100m", "64Mi"), ctr("250m", "32Mi")}},
			milli: 350, bytes: 96 << 20},
		{name: "the largest init container counts when it is larger", spec: corev1.PodSpec{
			InitContainers: []corev1.Container{ctr("1", "16Mi")}, Containers: []corev1.Container{ctr("100m", "64Mi")}},
			milli: 1000, bytes: 64 << 20},
		{name: "a native sidecar runs beside the containers", spec: corev1.PodSpec{
			InitContainers: []corev1.Container{sidecar("200m", "32Mi")}, Containers: []corev1.Container{ctr("100m", "64Mi")}},
			milli: 300, bytes: 96 << 20},
		{name: "pod overhead is added", spec: corev1.PodSpec{Containers: []corev1.Container{ctr("100m", "64Mi")},
			Overhead: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("50m"), corev1.ResourceMemory: resource.MustParse("8Mi")}},
			milli: 150, bytes: 72 << 20},
		{name: "pod-level requests win", spec: corev1.PodSpec{Containers: []corev1.Container{ctr("100m", "64Mi")},
			Resources: &corev1.ResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("128Mi")}}},
			milli: 500, bytes: 128 << 20},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := podRequests(&tc.spec)
			if got != (policy.Resources{Pods: 1, MilliCPU: tc.milli, Memory: tc.bytes}) {
				t.Errorf("podRequests = %+v, want %d millicpu, %d bytes", got, tc.milli, tc.bytes)
			}
		})
	}
}
