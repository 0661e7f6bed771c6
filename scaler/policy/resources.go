package policy

import (
	corev1 "k8s.io/api/core/v1"
	resourcehelper "k8s.io/component-helpers/resource"
)

// Resources are the requests of one pod (all containers summed) or the free
// allocatable of a node.
type Resources struct {
	MilliCPU int64
	Memory   int64 // bytes
	Pods     int64 // a pod takes 1
}

func (r Resources) fits(pod Resources) bool {
	return pod.MilliCPU <= r.MilliCPU && pod.Memory <= r.Memory && pod.Pods <= r.Pods
}

func (r *Resources) take(pod Resources) {
	r.MilliCPU -= pod.MilliCPU
	r.Memory -= pod.Memory
	r.Pods -= pod.Pods
}

// PodRequests is what one pod of spec requests as the scheduler counts it:
// regular and sidecar containers, the largest init container, pod overhead
// and pod-level resources.
func PodRequests(spec *corev1.PodSpec) Resources {
	req := resourcehelper.PodRequests(&corev1.Pod{Spec: *spec}, resourcehelper.PodResourcesOptions{})
	return Resources{Pods: 1, MilliCPU: req.Cpu().MilliValue(), Memory: req.Memory().Value()}
}

// Add returns a + b.
func (r Resources) Add(b Resources) Resources {
	return Resources{MilliCPU: r.MilliCPU + b.MilliCPU, Memory: r.Memory + b.Memory, Pods: r.Pods + b.Pods}
}

// Sub returns a - b.
func (r Resources) Sub(b Resources) Resources {
	return Resources{MilliCPU: r.MilliCPU - b.MilliCPU, Memory: r.Memory - b.Memory, Pods: r.Pods - b.Pods}
}
