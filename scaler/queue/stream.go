package queue

import (
	"encoding/json"
	"fmt"
)

// Answers are read as a stream of JSON values, so that only what a tick
// asks for is kept and an answer is never held whole: WalkObject and
// WalkArray follow the answer's structure, and a field or element is
// decoded (or skipped) alone. A skipped value is buffered while it is
// read, so at most one value of the answer is held at a time, within the
// answer's size bound (GetJSON's).

// WalkObject reads one JSON object, calling field for each key; field must
// consume the value, or return false to have it skipped.
func WalkObject(dec *json.Decoder, field func(key string) (bool, error)) error {
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

// WalkArray reads one JSON array (or null: no elements), calling elem to
// consume each element.
func WalkArray(dec *json.Decoder, elem func() error) error {
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

// skipValue consumes one JSON value in one Decode (the decoder's own
// scan, far cheaper than token by token), holding none of it past the
// call.
func skipValue(dec *json.Decoder) error {
	var v skipped
	return dec.Decode(&v)
}

// skipped is a value read and dropped.
type skipped struct{}

func (*skipped) UnmarshalJSON([]byte) error { return nil }

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
