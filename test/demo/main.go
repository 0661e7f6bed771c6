// Command demo will run microscaling in a box locally: a control plane,
// nsqd, the controller and a producer and consumers. It is not built yet.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "demo: not built yet (see issue 'Microscaling in a box'); `make cluster` starts the local control plane and nsqd")
	os.Exit(2)
}
