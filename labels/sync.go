package labels

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8slabels "k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/klog/v2"

	"github.com/microscaling/microscaling/annotations"
)

// Event reasons, on the Deployment whose images are read.
const (
	ReasonLabelSyncFailed   = "LabelSyncFailed"
	ReasonInvalidImageLabel = "InvalidImageLabel"
	ReasonLabelsSynced      = "LabelsSynced"
)

// Syncer fills a Deployment's annotations from its images' labels.
type Syncer struct {
	Client   kubernetes.Interface
	Resolver *Resolver
	Recorder record.EventRecorder
	Prefixes []string
	// Keys are the contract's keys images may set; nil: DefaultKeys.
	Keys map[string]bool
	// DryRun prints each patch to Out instead of applying it.
	DryRun bool
	Out    io.Writer

	mu        sync.Mutex // guards keychains
	keychains map[string]keychainSeen
}

type keychainSeen struct {
	kc *Keychain
	at time.Time
}

// NewSyncer makes a Syncer that reads images with resolver, patches
// through client, records Events with recorder and exposes the image labels
// that start with prefixes.
func NewSyncer(client kubernetes.Interface, recorder record.EventRecorder, resolver *Resolver, prefixes []string) *Syncer {
	return &Syncer{Client: client, Recorder: recorder, Resolver: resolver, Prefixes: prefixes}
}

// Enabled reports whether d asks for label sync.
func Enabled(d *appsv1.Deployment) bool { return d.Annotations[annotations.SyncLabels] == "true" }

// Sync reads d's images and patches what differs. It returns whether a patch
// was (or, in a dry run, would be) applied. A registry failure changes
// nothing and is reported in a Warning Event.
func (s *Syncer) Sync(ctx context.Context, d *appsv1.Deployment) (bool, error) {
	kc, err := s.keychain(ctx, d)
	if err != nil {
		s.Recorder.Eventf(d, corev1.EventTypeWarning, ReasonLabelSyncFailed, "reading imagePullSecrets: %v", err)
		return false, err
	}
	var imgs []Image
	for _, c := range d.Spec.Template.Spec.Containers {
		digest, l, err := s.Resolver.Labels(ctx, c.Image, kc)
		if err != nil {
			// The registry's own words go to the log only: a registry is
			// anyone's, and its answer is not echoed to the tenant.
			s.Recorder.Eventf(d, corev1.EventTypeWarning, ReasonLabelSyncFailed, "container %s: %s", c.Name, failure(c.Image, err))
			return false, fmt.Errorf("deployment %s/%s: %w", d.Namespace, d.Name, err)
		}
		imgs = append(imgs, Image{Container: c.Name, Digest: digest, Labels: l})
	}
	set, remove, problems := Derive(d.Annotations, imgs, s.Prefixes, s.Keys)
	for _, p := range problems {
		s.Recorder.Event(d, corev1.EventTypeWarning, ReasonInvalidImageLabel, p.String())
	}
	if len(set)+len(remove) == 0 {
		return false, nil
	}
	patch := map[string]any{}
	for k, v := range set {
		patch[k] = v
	}
	for _, k := range remove {
		patch[k] = nil // a merge patch deletes a null
	}
	body, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": patch}})
	if err != nil {
		return false, fmt.Errorf("encoding patch: %w", err)
	}
	if s.DryRun {
		fmt.Fprintf(s.Out, "deployment %s/%s: merge patch %s\n", d.Namespace, d.Name, body)
		return true, nil
	}
	if _, err := s.Client.AppsV1().Deployments(d.Namespace).Patch(ctx, d.Name, types.MergePatchType, body, metav1.PatchOptions{}); err != nil {
		return false, fmt.Errorf("patching %s/%s: %w", d.Namespace, d.Name, err)
	}
	keys := make([]string, 0, len(patch))
	for k := range patch {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	s.Recorder.Eventf(d, corev1.EventTypeNormal, ReasonLabelsSynced, "set from image labels: %v", keys)
	return true, nil
}

// keychain gathers the pod template's and its service account's
// imagePullSecrets, read again after the Resolver's TagTTL.
func (s *Syncer) keychain(ctx context.Context, d *appsv1.Deployment) (*Keychain, error) {
	spec := &d.Spec.Template.Spec
	if n := len(spec.ImagePullSecrets); n > MaxPullSecrets {
		return nil, fmt.Errorf("%d imagePullSecrets: at most %d are read", n, MaxPullSecrets)
	}
	key := d.Namespace + "/" + spec.ServiceAccountName + "/" + fmt.Sprint(spec.ImagePullSecrets)
	s.mu.Lock()
	seen, ok := s.keychains[key]
	s.mu.Unlock()
	if ok && s.Resolver.now().Sub(seen.at) < s.Resolver.TagTTL {
		return seen.kc, nil
	}
	kc, err := s.readKeychain(ctx, d)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if s.keychains == nil {
		s.keychains = map[string]keychainSeen{}
	}
	if len(s.keychains) >= maxKeychains {
		for k, seen := range s.keychains {
			if s.Resolver.now().Sub(seen.at) >= s.Resolver.TagTTL {
				delete(s.keychains, k)
			}
		}
	}
	if len(s.keychains) < maxKeychains {
		s.keychains[key] = keychainSeen{kc, s.Resolver.now()}
	}
	s.mu.Unlock()
	return kc, nil
}

// MaxPullSecrets bounds the imagePullSecrets read for one Deployment (its
// pod template's and its service account's, each name once): past it,
// label sync fails for it with a Warning and no Secret is read.
const MaxPullSecrets = 16

// maxKeychains bounds the credential sets kept; past it, expired ones are
// dropped and, if none has expired, the new one is not kept.
const maxKeychains = 1024

func (s *Syncer) readKeychain(ctx context.Context, d *appsv1.Deployment) (*Keychain, error) {
	spec := &d.Spec.Template.Spec
	var names []string
	for _, r := range spec.ImagePullSecrets {
		names = append(names, r.Name)
	}
	sa := spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	acct, err := s.Client.CoreV1().ServiceAccounts(d.Namespace).Get(ctx, sa, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
	case err != nil:
		return nil, fmt.Errorf("service account %s/%s: %w", d.Namespace, sa, err)
	default:
		for _, r := range acct.ImagePullSecrets {
			names = append(names, r.Name)
		}
	}
	seen := map[string]bool{}
	names = slices.DeleteFunc(names, func(n string) bool { // each once, in order: the first credential for a registry wins
		dup := seen[n]
		seen[n] = true
		return dup
	})
	if len(names) > MaxPullSecrets {
		return nil, fmt.Errorf("%d imagePullSecrets with the service account's: at most %d are read", len(names), MaxPullSecrets)
	}
	var secrets []*corev1.Secret
	for _, n := range names {
		sec, err := s.Client.CoreV1().Secrets(d.Namespace).Get(ctx, n, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			continue // as the kubelet does: a missing pull secret is skipped
		}
		if err != nil {
			return nil, fmt.Errorf("imagePullSecret %s/%s: %w", d.Namespace, n, err)
		}
		secrets = append(secrets, sec)
	}
	return KeychainFromSecrets(secrets)
}

// Stats counts one pass.
type Stats struct {
	Deployments, Patched, Failed int
}

// SyncAll syncs every Deployment of namespace ("" for all) that asks for it,
// with workers in parallel.
func (s *Syncer) SyncAll(ctx context.Context, namespace string, workers int) (Stats, error) {
	var list []appsv1.Deployment
	opts := metav1.ListOptions{Limit: 500}
	for {
		page, err := s.Client.AppsV1().Deployments(namespace).List(ctx, opts)
		if err != nil {
			return Stats{}, fmt.Errorf("listing deployments: %w", err)
		}
		list = append(list, page.Items...)
		if page.Continue == "" {
			break
		}
		opts.Continue = page.Continue
	}
	var st Stats
	var mu sync.Mutex // guards st and errs
	var errs []error
	work := make(chan *appsv1.Deployment)
	var wg sync.WaitGroup
	for range max(1, workers) {
		wg.Go(func() {
			for d := range work {
				patched, err := s.Sync(ctx, d)
				mu.Lock()
				st.Deployments++
				if patched {
					st.Patched++
				}
				if err != nil {
					st.Failed++
					errs = append(errs, err)
				}
				mu.Unlock()
			}
		})
	}
	for i := range list {
		if Enabled(&list[i]) {
			work <- &list[i]
		}
	}
	close(work)
	wg.Wait()
	return st, errors.Join(errs...)
}

// Controller syncs Deployments with sync-labels "true" when their images
// change and every interval, from a shared informer.
type Controller struct {
	syncer   *Syncer
	lister   appslisters.DeploymentLister
	interval time.Duration
	queue    workqueue.TypedRateLimitingInterface[cache.ObjectName]
}

// NewController makes a label-sync controller over lister's Deployments;
// add its Handler to the informer behind lister, then Run it.
func NewController(s *Syncer, lister appslisters.DeploymentLister, interval time.Duration) *Controller {
	return &Controller{syncer: s, lister: lister, interval: interval,
		queue: workqueue.NewTypedRateLimitingQueueWithConfig(workqueue.DefaultTypedControllerRateLimiter[cache.ObjectName](),
			workqueue.TypedRateLimitingQueueConfig[cache.ObjectName]{Name: "microscaling-labels"})}
}

// Handler returns the event handler to add to the Deployment informer.
func (c *Controller) Handler() cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if d, ok := obj.(*appsv1.Deployment); ok && Enabled(d) {
				c.queue.Add(cache.MetaObjectToName(d))
			}
		},
		UpdateFunc: func(old, cur any) {
			o, n := old.(*appsv1.Deployment), cur.(*appsv1.Deployment)
			if Enabled(n) && (!Enabled(o) || !slices.Equal(images(o), images(n))) {
				c.queue.Add(cache.MetaObjectToName(n))
			}
		},
	}
}

func images(d *appsv1.Deployment) []string {
	var out []string
	for _, c := range d.Spec.Template.Spec.Containers {
		out = append(out, c.Name+"="+c.Image)
	}
	return out
}

// Run works the queue and re-adds every enabled Deployment each Interval.
// It returns once its workers have finished: nothing is patched after.
func (c *Controller) Run(ctx context.Context, workers int) {
	var wg sync.WaitGroup
	defer wg.Wait()
	defer c.queue.ShutDown()
	for range max(1, workers) {
		wg.Go(func() {
			for c.next(ctx) {
			}
		})
	}
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			ds, err := c.lister.List(k8slabels.Everything())
			if err != nil { // a cache lister does not fail; said if it ever does
				klog.FromContext(ctx).Error(err, "listing Deployments for label sync")
				continue
			}
			for _, d := range ds {
				if Enabled(d) {
					c.queue.Add(cache.MetaObjectToName(d))
				}
			}
		}
	}
}

func (c *Controller) next(ctx context.Context) bool {
	key, quit := c.queue.Get()
	if quit {
		return false
	}
	defer c.queue.Done(key)
	d, err := c.lister.Deployments(key.Namespace).Get(key.Name)
	if apierrors.IsNotFound(err) {
		c.queue.Forget(key)
		return true
	}
	if err == nil && Enabled(d) {
		_, err = c.syncer.Sync(ctx, d)
	}
	if err != nil {
		klog.FromContext(ctx).Info("label sync failed; will retry", "deployment", key, "err", err)
		c.queue.AddRateLimited(key)
		return true
	}
	c.queue.Forget(key)
	return true
}
