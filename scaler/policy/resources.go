package policy

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

// Add returns a + b.
func (r Resources) Add(b Resources) Resources {
	return Resources{MilliCPU: r.MilliCPU + b.MilliCPU, Memory: r.Memory + b.Memory, Pods: r.Pods + b.Pods}
}

// Sub returns a - b.
func (r Resources) Sub(b Resources) Resources {
	return Resources{MilliCPU: r.MilliCPU - b.MilliCPU, Memory: r.Memory - b.Memory, Pods: r.Pods - b.Pods}
}
