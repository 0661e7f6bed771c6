#!/usr/bin/env bash
# build.sh builds the real parts the tests run against (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, kwok, nsqd, nsqlookupd,
# and the tools crane, helm and promtool)
# from the Go module proxy, in small wrapper modules outside the project's
# go.mod, and caches the binaries outside the clone. A rebuild happens only
# when the pinned versions below change.
#
# Usage: test/tools/build.sh        prints the bin directory on the last line.
#        test/tools/build.sh tools  only the release's tools (crane, helm, cosign)
set -euo pipefail

K8S_VERSION=v1.37.2
STAGING_VERSION=v0.37.2
ETCD_VERSION=v3.7.3
KWOK_VERSION=v0.8.0
NSQ_VERSION=v1.3.0
# crane's version is in its file name, so changing it rebuilds crane alone.
GGCR_VERSION=v0.22.1
HELM_VERSION=v3.22.0
# cosign signs and attests the release's image (key-based; make release).
COSIGN_VERSION=v2.6.5
# promtool checks the chart's alerting rules and the dashboard's queries.
PROMETHEUS_VERSION=v0.316.0
GO_SVC_FORK=github.com/mreiferson/go-svc@v1.2.2-0.20210815184239-7a96e00010f6

PINS="k8s=${K8S_VERSION} etcd=${ETCD_VERSION} kwok=${KWOK_VERSION} nsq=${NSQ_VERSION} go=$(go env GOVERSION)"
CACHE="${MICROSCALING_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/microscaling}"
KEY=$(printf '%s' "$PINS" | sha256sum | cut -c1-12)
BIN="$CACHE/bin-$KEY"
WORK="$CACHE/src-$KEY"
mkdir -p "$BIN" "$WORK"

# One build at a time per cache: concurrent test packages may all ask.
exec 9>"$CACHE/.lock"
flock 9

log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# need NAME... : true when any binary is missing.
need() { for b in "$@"; do [ -e "$BIN/$b" ] || return 0; done; return 1; }

build_k8s() {
  need kube-apiserver kube-controller-manager kube-scheduler kubectl || return 0
  local dir="$WORK/k8s"
  mkdir -p "$dir"
  log "kubernetes $K8S_VERSION: cold build takes about 8-10 minutes on 2 cores (kube-apiserver alone ~6 min, ~3 GB RAM); warm relink ~30 s each"
  (
    cd "$dir"
    [ -f go.mod ] || {
      go mod init microscaling.local/k8s-tools >/dev/null 2>&1
      {
        echo "require k8s.io/kubernetes $K8S_VERSION"
        echo "replace ("
        for m in api apiextensions-apiserver apimachinery apiserver cli-runtime \
          client-go cloud-provider cluster-bootstrap code-generator component-base \
          component-helpers controller-manager cri-api cri-client cri-streaming \
          csi-translation-lib dynamic-resource-allocation endpointslice externaljwt \
          kms kube-aggregator kube-controller-manager kube-proxy kube-scheduler \
          kubectl kubelet metrics mount-utils pod-security-admission \
          sample-apiserver sample-cli-plugin sample-controller streaming; do
          echo "  k8s.io/$m => k8s.io/$m $STAGING_VERSION"
        done
        echo ")"
      } >>go.mod
    }
    local pkgs="k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl"
    log "resolving modules"
    go get -tool $pkgs >&2
    go mod tidy >&2
    local minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
    local ld="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
    for p in $pkgs; do
      local name=${p##*/}
      [ -x "$BIN/$name" ] && continue
      local t0=$SECONDS
      log "building $name"
      go build -trimpath -ldflags "$ld" -o "$BIN/$name.tmp" "$p" >&2
      mv "$BIN/$name.tmp" "$BIN/$name"
      log "built $name in $((SECONDS - t0)) s"
    done
  )
}

build_etcd() {
  need etcd || return 0
  local dir="$WORK/etcd"
  mkdir -p "$dir"
  log "etcd $ETCD_VERSION: about 1 minute cold"
  (
    cd "$dir"
    [ -f go.mod ] || go mod init microscaling.local/etcd-tools >/dev/null 2>&1
    go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
    go mod tidy >&2
    go build -trimpath -ldflags "-s -w" -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3 >&2
    mv "$BIN/etcd.tmp" "$BIN/etcd"
  )
}

build_kwok() {
  need kwok kwok-stages.yaml || return 0
  log "kwok $KWOK_VERSION: about 1.5 minutes cold"
  GOBIN="$BIN" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION" >&2
  # kwok ships its stage files in its module; join the ones the harness uses.
  local stage
  stage="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
  {
    for f in node/fast/node-initialize.yaml node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
      pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
      echo "---"
      cat "$stage/$f"
    done
  } >"$BIN/kwok-stages.yaml.tmp"
  mv "$BIN/kwok-stages.yaml.tmp" "$BIN/kwok-stages.yaml"
}

build_nsq() {
  need nsqd nsqlookupd || return 0
  local dir="$WORK/nsq"
  mkdir -p "$dir"
  log "nsq $NSQ_VERSION: about 30 s cold"
  (
    cd "$dir"
    [ -f go.mod ] || {
      go mod init microscaling.local/nsq-tools >/dev/null 2>&1
      echo "replace github.com/judwhite/go-svc => ${GO_SVC_FORK/@/ }" >>go.mod
    }
    go get -tool "github.com/nsqio/nsq/apps/nsqd@$NSQ_VERSION" "github.com/nsqio/nsq/apps/nsqlookupd@$NSQ_VERSION" >&2
    go mod tidy >&2
    for a in nsqd nsqlookupd; do
      go build -trimpath -ldflags "-s -w" -o "$BIN/$a.tmp" "github.com/nsqio/nsq/apps/$a" >&2
      mv "$BIN/$a.tmp" "$BIN/$a"
    done
  )
}

# install_versioned NAME VERSION PACKAGE WHY: go install a tool into BIN as
# NAME-VERSION, so that changing its version rebuilds it alone.
install_versioned() {
  need "$1-$2" || return 0
  log "$1 $2 ($4)"
  local tmp
  tmp=$(mktemp -d)
  GOBIN="$tmp" go install -trimpath -ldflags "-s -w" "$3@$2" >&2
  mv "$tmp/$1" "$BIN/$1-$2"
  rmdir "$tmp"
}

t0=$SECONDS
if [ "${1:-}" != tools ]; then
  build_nsq
  build_etcd
  build_kwok
  build_k8s
fi
install_versioned crane "$GGCR_VERSION" github.com/google/go-containerregistry/cmd/crane "a third-party registry for tests: about 30 s cold"
install_versioned helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm "lint and template of the chart: about 1 minute cold"
install_versioned cosign "$COSIGN_VERSION" github.com/sigstore/cosign/v2/cmd/cosign "signs the release: about 3 minutes cold"
[ "${1:-}" = tools ] || install_versioned promtool "$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/promtool "Prometheus's rule checker: about 10 minutes cold"
log "all binaries ready in $BIN ($((SECONDS - t0)) s)"
echo "$BIN"
