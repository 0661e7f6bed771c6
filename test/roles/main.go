// Command roles runs one role of the demo in a pod: a producer whose rate
// rises and falls, a consumer that works a fixed time per message, or
// background work that fills spare room. It is the demo image's entrypoint,
// kept out of the controller's binary.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"k8s.io/klog/v2"

	"github.com/microscaling/microscaling/test/workload"
)

const usage = `usage: roles producer [flags]     publish on a rising and falling schedule
       roles consumer [flags]     consume, working a fixed time per message
       roles background [flags]   low-priority work that fills spare room
       roles ROLE -h              the flags of a role`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	role, args := os.Args[1], os.Args[2:]
	switch role {
	case "producer", "consumer", "background":
	default:
		fmt.Fprintf(os.Stderr, "roles: unknown role %q\n%s\n", role, usage)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, role, args); err != nil {
		klog.ErrorS(err, "role failed", "role", role)
		klog.FlushAndExit(klog.ExitFlushTimeout, 1)
	}
	klog.Flush()
}

// run runs one role until ctx ends.
func run(ctx context.Context, role string, args []string) error {
	fs := flag.NewFlagSet(role, flag.ExitOnError)
	nsqd := fs.String("nsqd", "nsq:4150", "nsqd TCP address")
	lookupd := fs.String("lookupd", "", "nsqlookupd HTTP address (consumer; instead of --nsqd)")
	topic := fs.String("topic", "jobs", "topic")
	channel := fs.String("channel", "work", "channel (consumer)")
	work := fs.Duration("work", 100*time.Millisecond, "time a consumer spends on one message")
	minRate := fs.Float64("min-rate", 5, "lowest producer rate, messages per second")
	maxRate := fs.Float64("max-rate", 80, "highest producer rate, messages per second")
	period := fs.Duration("period", 4*time.Minute, "one rise and fall of the producer rate")
	klog.InitFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch role {
	case "producer":
		return workload.Produce(ctx, *nsqd, *topic, workload.Schedule{Min: *minRate, Max: *maxRate, Period: *period})
	case "consumer":
		return workload.Consume(ctx, *nsqd, *lookupd, *topic, *channel, *work)
	default:
		// Background work has nothing to consume: it holds its place until told to stop.
		<-ctx.Done()
		return nil
	}
}
