package nsq

import (
	"encoding/json"
	"fmt"

	"github.com/microscaling/microscaling/scaler/queue"
)

// The answers of nsqd and nsqlookupd are read as a stream (see
// queue.WalkObject): only the topics a tick asks for are kept, and a
// lookup naming too many nsqds fails at the first one too many.

// errNestedWrapper marks an answer with a {"data": ...} wrapper inside
// another: nsqd and nsqlookupd before 1.0 wrapped their answers once, and
// reading wrappers within wrappers would let an answer's nesting, not its
// size, set the stack the read takes.
const errNestedWrapper = queue.Class(`malformed answer: a "data" wrapper inside another`)

// decodeStats reads nsqd's /stats (bare, or in the one {"data": ...}
// wrapper of nsqd before 1.0), keeping the topics want accepts.
func decodeStats(dec *json.Decoder, want func(topic string) bool) (*nsqStats, error) {
	return decodeStatsIn(dec, want, false)
}

func decodeStatsIn(dec *json.Decoder, want func(topic string) bool, wrapped bool) (*nsqStats, error) {
	st := &nsqStats{}
	err := queue.WalkObject(dec, func(key string) (bool, error) {
		switch key {
		case "data":
			if wrapped {
				return true, errNestedWrapper
			}
			inner, err := decodeStatsIn(dec, want, true)
			if err == nil {
				st.Topics = append(st.Topics, inner.Topics...)
			}
			return true, err
		case "topics":
			return true, queue.WalkArray(dec, func() error {
				// Into the slice's next place: a topic of its own would
				// escape, one allocation for each of thousands a tick.
				st.Topics = append(st.Topics, nsqTopic{})
				last := len(st.Topics) - 1
				if err := dec.Decode(&st.Topics[last]); err != nil {
					return err
				}
				if !want(st.Topics[last].Name) {
					st.Topics[last] = nsqTopic{}
					st.Topics = st.Topics[:last]
				}
				return nil
			})
		}
		return false, nil
	})
	return st, err
}

// errTooManyProducers marks a lookup that names more nsqds than are read
// per topic.
const errTooManyProducers = queue.Class("too many nsqds for one topic")

type producer struct {
	Broadcast string `json:"broadcast_address"`
	HTTPPort  int    `json:"http_port"`
}

// decodeLookup reads nsqlookupd's /lookup answer (bare, or in the one
// {"data": ...} wrapper before 1.0), failing at the first producer over
// maxProducers.
func decodeLookup(dec *json.Decoder) ([]producer, error) {
	return decodeLookupIn(dec, false)
}

func decodeLookupIn(dec *json.Decoder, wrapped bool) ([]producer, error) {
	var out []producer
	err := queue.WalkObject(dec, func(key string) (bool, error) {
		switch key {
		case "data":
			if wrapped {
				return true, errNestedWrapper
			}
			inner, err := decodeLookupIn(dec, true)
			if len(out)+len(inner) > maxProducers {
				return true, fmt.Errorf("%w: more than %d", errTooManyProducers, maxProducers)
			}
			out = append(out, inner...)
			return true, err
		case "producers":
			return true, queue.WalkArray(dec, func() error {
				if len(out) == maxProducers {
					return fmt.Errorf("%w: more than %d", errTooManyProducers, maxProducers)
				}
				var p producer
				if err := dec.Decode(&p); err != nil {
					return err
				}
				out = append(out, p)
				return nil
			})
		}
		return false, nil
	})
	return out, err
}
