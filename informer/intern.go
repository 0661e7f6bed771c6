package informer

import (
	"slices"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
)

// internMax bounds each of the interner's tables. Full, a table is
// emptied and fills again with what comes next: what tenants write is
// unbounded in kind, and a table of unique values only costs what not
// sharing would.
const internMax = 4096

// internLen is the longest string shared: namespaces, annotation keys and
// values, images and the like; not a last-applied-configuration.
const internLen = 256

// interner hands out one copy of equal strings and equal request lists, so
// that thousands of cached objects of a few namespaces, images and
// container shapes do not each keep their own (the API's decoder
// allocates every one afresh). What it hands out is shared: read only, as
// everything in an informer's cache is.
type interner struct {
	mu   sync.Mutex
	strs table[string]
	reqs table[corev1.ResourceList]
	key  strings.Builder
}

func newInterner() *interner {
	return &interner{strs: table[string]{}, reqs: table[corev1.ResourceList]{}}
}

// table is one of the interner's bounded tables, by a value's key.
type table[V any] map[string]V

// share is the value kept under k, or v, kept from now on.
func (t table[V]) share(k string, v V) V {
	if c, ok := t[k]; ok {
		return c
	}
	if len(t) >= internMax {
		clear(t)
	}
	t[k] = v
	return v
}

// string is s, or an equal string handed out before.
func (in *interner) string(s string) string {
	if s == "" || len(s) > internLen {
		return s
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.strs.share(s, s)
}

// requests is rl, or an equal list handed out before.
func (in *interner) requests(rl corev1.ResourceList) corev1.ResourceList {
	if len(rl) == 0 {
		return nil
	}
	names := make([]corev1.ResourceName, 0, len(rl))
	for n := range rl {
		names = append(names, n)
	}
	slices.Sort(names)
	in.mu.Lock()
	defer in.mu.Unlock()
	in.key.Reset()
	for _, n := range names {
		q := rl[n]
		in.key.WriteString(string(n))
		in.key.WriteByte('=')
		in.key.WriteString(q.String())
		in.key.WriteByte(';')
	}
	return in.reqs.share(in.key.String(), rl)
}

// annotations keeps of m the keys keep accepts, shared; m itself when it
// holds no other (a map does not shrink as keys leave it).
func (in *interner) annotations(m map[string]string, keep func(string) bool) map[string]string {
	n := 0
	for k := range m {
		if keep(k) {
			n++
		}
	}
	if n == 0 {
		return nil
	}
	out := m
	if n < len(m) {
		out = make(map[string]string, n)
	}
	for k, v := range m {
		if keep(k) {
			out[in.string(k)] = in.string(v)
		}
	}
	return out
}
