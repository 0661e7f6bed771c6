package informer

import (
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
)

// MaxShards bounds how many controllers may share one cluster's namespaces.
const MaxShards = 64

// Shard is the part of the cluster's namespaces one controller manages
// when several share them: those whose name hashes (FNV-1a, 32 bits) to
// Index modulo Count. The hash of a name never changes, so every
// controller of the same Count agrees on every namespace's shard without
// talking to the others. The zero Shard manages every namespace.
type Shard struct {
	Index, Count int
}

// ParseShard reads a shard written as INDEX/COUNT ("0/3"); "" is the zero
// Shard.
func ParseShard(s string) (Shard, error) {
	if s == "" {
		return Shard{}, nil
	}
	i, n, ok := strings.Cut(s, "/")
	index, err1 := strconv.Atoi(i)
	count, err2 := strconv.Atoi(n)
	switch {
	case !ok || err1 != nil || err2 != nil:
		return Shard{}, fmt.Errorf("%q: want INDEX/COUNT, as 0/3", s)
	case count < 1 || count > MaxShards:
		return Shard{}, fmt.Errorf("%q: the count must be 1 to %d", s, MaxShards)
	case index < 0 || index >= count:
		return Shard{}, fmt.Errorf("%q: the index must be 0 to %d", s, count-1)
	}
	return Shard{Index: index, Count: count}, nil
}

// Sharded reports whether the namespaces are split at all.
func (s Shard) Sharded() bool { return s.Count > 1 }

// Owns reports whether the shard manages namespace.
func (s Shard) Owns(namespace string) bool {
	if !s.Sharded() {
		return true
	}
	h := fnv.New32a()
	h.Write([]byte(namespace)) // a hash.Hash never fails to write
	return int(h.Sum32()%uint32(s.Count)) == s.Index
}

func (s Shard) String() string {
	if !s.Sharded() {
		return "all"
	}
	return fmt.Sprintf("%d/%d", s.Index, s.Count)
}
