package nsq

import (
	"encoding/json"
	"fmt"

	"github.com/microscaling/microscaling/scaler/queue"
)

// The answers of nsqd and nsqlookupd are read as a stream of JSON tokens:
// only the topics a tick asks for are kept, and a lookup naming too many
// nsqds fails at the first one too many, so neither a huge nor a hostile
// answer is ever held whole.

// walkObject reads one JSON object, calling field for each key; field must
// consume the value, or return false to have it skipped.
func walkObject(dec *json.Decoder, field func(key string) (bool, error)) error {
	if err := expectDelim(dec, '{'); err != nil {
		return err
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		key, ok := tok.(string)
		if !ok {
			return &json.UnmarshalTypeError{Value: "object key", Type: nil}
		}
		used, err := field(key)
		if err != nil {
			return err
		}
		if !used {
			if err := skipValue(dec); err != nil {
				return err
			}
		}
	}
	_, err := dec.Token() // '}'
	return err
}

// walkArray reads one JSON array (or null: no elements), calling elem to
// consume each element.
func walkArray(dec *json.Decoder, elem func() error) error {
	tok, err := dec.Token()
	if err != nil || tok == nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != '[' {
		return &json.UnmarshalTypeError{Value: fmt.Sprintf("%v", tok), Type: nil}
	}
	for dec.More() {
		if err := elem(); err != nil {
			return err
		}
	}
	_, err = dec.Token() // ']'
	return err
}

// skipValue consumes one JSON value token by token, holding none of it.
func skipValue(dec *json.Decoder) error {
	depth := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		if d, ok := tok.(json.Delim); ok {
			if d == '{' || d == '[' {
				depth++
			} else {
				depth--
			}
		}
		if depth == 0 {
			return nil
		}
	}
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return &json.UnmarshalTypeError{Value: fmt.Sprintf("%v", tok), Type: nil}
	}
	return nil
}

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
	err := walkObject(dec, func(key string) (bool, error) {
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
			return true, walkArray(dec, func() error {
				var t nsqTopic
				if err := dec.Decode(&t); err != nil {
					return err
				}
				if want(t.Name) {
					st.Topics = append(st.Topics, t)
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
	err := walkObject(dec, func(key string) (bool, error) {
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
			return true, walkArray(dec, func() error {
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
