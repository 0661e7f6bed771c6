package policy

import (
	"reflect"
	"strings"
	"testing"
)

// nodes returns n nodes that each fit cpu millicores.
func nodes(n int, cpu int64) []Resources {
	out := make([]Resources, n)
	for i := range out {
		out[i] = Resources{MilliCPU: cpu, Memory: 1 << 40, Pods: 110}
	}
	return out
}

var pod500m = Resources{MilliCPU: 500, Memory: 1 << 20, Pods: 1}

func TestAllocate(t *testing.T) {
	tests := []struct {
		name   string
		group  Group
		want   []int32
		reason string // a substring of some member's reason
	}{
		{
			name: "steady state changes nothing",
			group: Group{RoomKnown: true, Free: nodes(2, 2000), Members: []Member{
				{Name: "consumer", Priority: 1, Want: 3, Current: 3, Max: 10, Pod: pod500m},
				{Name: "remainder", Priority: 2, Remainder: true, Current: 5, Max: 10, Pod: pod500m},
			}},
			want: []int32{3, 5},
		},
		{
			name: "remainder fills spare room",
			group: Group{RoomKnown: true, Free: nodes(2, 2000), Members: []Member{
				{Name: "consumer", Priority: 1, Want: 1, Current: 1, Max: 10, Pod: pod500m},
				{Name: "remainder", Priority: 2, Remainder: true, Current: 0, Max: 20, Pod: pod500m},
			}},
			want: []int32{1, 7},
		},
		{
			name: "consumer takes the remainder's room in one step",
			group: Group{RoomKnown: true, Free: nodes(2, 2000), Members: []Member{
				{Name: "consumer", Priority: 1, Want: 6, Current: 1, Max: 10, Pod: pod500m},
				{Name: "remainder", Priority: 2, Remainder: true, Current: 7, Max: 20, Pod: pod500m},
			}},
			want: []int32{6, 2}, reason: "node room taken by higher priorities",
		},
		{
			name: "remainder never below its min",
			group: Group{RoomKnown: true, Free: nodes(2, 2000), Members: []Member{
				{Name: "consumer", Priority: 1, Want: 8, Current: 1, Max: 10, Pod: pod500m},
				{Name: "remainder", Priority: 2, Remainder: true, Current: 7, Min: 2, Max: 20, Pod: pod500m},
			}},
			want: []int32{8, 2}, reason: "held at min 2",
		},
		{
			name: "min above room is still owed",
			group: Group{RoomKnown: true, Free: nodes(1, 1000), Members: []Member{
				{Name: "consumer", Priority: 1, Want: 4, Current: 4, Min: 4, Max: 10, Pod: pod500m},
				{Name: "remainder", Priority: 2, Remainder: true, Current: 1, Min: 1, Max: 20, Pod: pod500m},
			}},
			want: []int32{4, 1},
		},
		{
			name: "consumer beyond node room is not capped but lower priorities are",
			group: Group{RoomKnown: true, Free: nodes(1, 2000), Members: []Member{
				{Name: "consumer", Priority: 1, Want: 6, Current: 2, Max: 10, Pod: pod500m},
				{Name: "batch", Priority: 2, Want: 3, Current: 1, Max: 10, Pod: pod500m},
				{Name: "remainder", Priority: 3, Remainder: true, Current: 0, Max: 20, Pod: pod500m},
			}},
			want: []int32{6, 0, 0},
		},
		{
			name: "lone queue member with no node data grows to want",
			group: Group{RoomKnown: true, Members: []Member{
				{Name: "consumer", Priority: 1, Want: 5, Current: 1, Min: 1, Max: 10, Pod: pod500m},
			}},
			want: []int32{5},
		},
		{
			name: "two remainders by priority",
			group: Group{RoomKnown: true, Free: nodes(1, 4000), Members: []Member{
				{Name: "consumer", Priority: 1, Want: 2, Current: 2, Max: 10, Pod: pod500m},
				{Name: "bg-low", Priority: 3, Remainder: true, Current: 0, Max: 20, Pod: pod500m},
				{Name: "bg-high", Priority: 2, Remainder: true, Current: 0, Max: 4, Pod: pod500m},
			}},
			want: []int32{2, 2, 4},
		},
		{
			name: "equal priorities take turns",
			group: Group{RoomKnown: true, Free: nodes(1, 3000), Members: []Member{
				{Name: "a", Priority: 1, Want: 5, Current: 0, Max: 10, Pod: pod500m},
				{Name: "b", Priority: 1, Want: 5, Current: 0, Max: 10, Pod: pod500m},
			}, Budget: 6},
			want: []int32{3, 3},
		},
		{
			name: "group budget caps the total",
			group: Group{RoomKnown: true, Free: nodes(4, 4000), Budget: 10, Members: []Member{
				{Name: "consumer", Priority: 1, Want: 7, Current: 2, Max: 10, Pod: pod500m},
				{Name: "remainder", Priority: 2, Remainder: true, Current: 8, Max: 20, Pod: pod500m},
			}},
			want: []int32{7, 3}, reason: "budget 10",
		},
		{
			name: "unverified room: remainder does not grow",
			group: Group{RoomKnown: false, Members: []Member{
				{Name: "consumer", Priority: 1, Want: 2, Current: 2, Max: 10, Pod: pod500m},
				{Name: "remainder", Priority: 2, Remainder: true, Current: 3, Max: 20, Pod: pod500m},
			}},
			want: []int32{2, 3}, reason: "unverified",
		},
		{
			name: "pending remainder pods give their room back",
			group: Group{RoomKnown: true, Free: nodes(2, 2000), Members: []Member{
				{Name: "consumer", Priority: 1, Want: 1, Current: 1, Max: 10, Pod: pod500m},
				{Name: "remainder", Priority: 2, Remainder: true, Current: 7, Pending: 2, Max: 20, Pod: pod500m},
			}},
			want: []int32{1, 5}, reason: "2 pods pending",
		},
		{
			name: "multi-container pod requests are summed by the caller and packed per node",
			group: Group{RoomKnown: true, Free: nodes(2, 1500), Members: []Member{
				{Name: "consumer", Priority: 1, Want: 1, Current: 1, Max: 10, Pod: Resources{MilliCPU: 700, Pods: 1}},
				{Name: "remainder", Priority: 2, Remainder: true, Max: 20, Pod: Resources{MilliCPU: 700, Pods: 1}},
			}},
			want: []int32{1, 3},
		},
		{
			name: "remainder only counts nodes it may land on",
			group: Group{RoomKnown: true, Free: nodes(3, 1000), Members: []Member{
				{Name: "consumer", Priority: 1, Want: 1, Current: 1, Max: 10, Pod: pod500m},
				{Name: "remainder", Priority: 2, Remainder: true, Max: 20, Pod: pod500m, Nodes: []int{2}},
			}},
			want: []int32{1, 2},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := Allocate(tc.group)
			var replicas []int32
			var reasons []string
			for _, d := range got {
				replicas = append(replicas, d.Replicas)
				reasons = append(reasons, d.Reason)
			}
			if !reflect.DeepEqual(replicas, tc.want) {
				t.Errorf("replicas = %v, want %v (reasons %q)", replicas, tc.want, reasons)
			}
			if tc.reason != "" && !strings.Contains(strings.Join(reasons, "|"), tc.reason) {
				t.Errorf("reasons %q do not say %q", reasons, tc.reason)
			}
		})
	}
}
