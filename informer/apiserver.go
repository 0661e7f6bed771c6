package informer

import (
	"context"
	"fmt"
	"net/netip"
	"slices"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8slabels "k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// The Service under which the API server publishes its own endpoints.
const (
	APIServerNamespace = metav1.NamespaceDefault
	APIServerService   = "kubernetes"
)

// apiServerSelector picks that Service's EndpointSlices.
var apiServerSelector = discoveryv1.LabelServiceName + "=" + APIServerService

// APIServerEndpoints are the address:port pairs the slices list: every
// endpoint's addresses, ready or not (an API server not ready now may be
// soon), with every port, sorted and each once.
func APIServerEndpoints(eps []*discoveryv1.EndpointSlice) []netip.AddrPort {
	var out []netip.AddrPort
	for _, s := range eps {
		for _, e := range s.Endpoints {
			for _, a := range e.Addresses {
				ip, err := netip.ParseAddr(a)
				if err != nil {
					continue // an FQDN slice: not an address to compare with
				}
				for _, p := range s.Ports {
					if p.Port != nil && *p.Port > 0 && *p.Port <= 65535 {
						out = append(out, netip.AddrPortFrom(ip.Unmap(), uint16(*p.Port)))
					}
				}
			}
		}
	}
	slices.SortFunc(out, netip.AddrPort.Compare)
	return slices.Compact(out)
}

// WatchAPIServer keeps set told of the API server's endpoints, as the
// cluster lists them in the EndpointSlices of default/kubernetes, each time
// they change. Call it before Run, which then waits for their first list
// too. It needs list and watch on endpointslices in namespace default.
func (inf *Informers) WatchAPIServer(client kubernetes.Interface, set func([]netip.AddrPort)) error {
	f := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(APIServerNamespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = apiServerSelector }))
	es := f.Discovery().V1().EndpointSlices()
	i, lister := es.Informer(), es.Lister()
	update := func(any) {
		all, err := lister.EndpointSlices(APIServerNamespace).List(k8slabels.Everything())
		if err == nil { // a lister's List of a cache never fails
			set(APIServerEndpoints(all))
		}
	}
	if _, err := i.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: update, UpdateFunc: func(_, cur any) { update(cur) }, DeleteFunc: update,
	}); err != nil {
		return fmt.Errorf("watching the API server's endpoints: %w", err)
	}
	inf.factories = append(inf.factories, f)
	inf.synced = append(inf.synced, i.HasSynced)
	return nil
}

// ListAPIServer reads the API server's endpoints once (a one-pass command
// has nothing to watch with).
func ListAPIServer(ctx context.Context, client kubernetes.Interface) ([]netip.AddrPort, error) {
	l, err := client.DiscoveryV1().EndpointSlices(APIServerNamespace).List(ctx, metav1.ListOptions{LabelSelector: apiServerSelector})
	if err != nil {
		return nil, fmt.Errorf("reading the API server's endpoints (EndpointSlices of %s/%s): %w", APIServerNamespace, APIServerService, err)
	}
	eps := make([]*discoveryv1.EndpointSlice, len(l.Items))
	for i := range l.Items {
		eps[i] = &l.Items[i]
	}
	return APIServerEndpoints(eps), nil
}
