package informer

import (
	corev1 "k8s.io/api/core/v1"
	resourcehelper "k8s.io/component-helpers/resource"

	"github.com/microscaling/microscaling/scaler/policy"
)

// podRequests is what one pod of spec requests as the scheduler counts it:
// regular and sidecar containers, the largest init container, pod overhead
// and pod-level resources.
func podRequests(spec *corev1.PodSpec) policy.Resources {
	req := resourcehelper.PodRequests(&corev1.Pod{Spec: *spec}, resourcehelper.PodResourcesOptions{})
	return policy.Resources{Pods: 1, MilliCPU: req.Cpu().MilliValue(), Memory: req.Memory().Value()}
}
