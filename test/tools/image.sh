#!/usr/bin/env bash
# image.sh builds the controller image (manifests/Dockerfile) and the demo
# roles' image (manifests/Dockerfile.demo) offline, for linux/amd64 and
# linux/arm64, each as one manifest list in podman's local storage:
#   microscaling/microscaling:VERSION and microscaling/demo:VERSION
# (VERSION from manifests/VERSION). Static binaries are cross-compiled into
# .image/ first; the images start FROM scratch.
#
# Usage: test/tools/image.sh [binaries]   "binaries": stop after .image/ (for docker buildx)
#   OCI_DIR=dir     also write each image as an OCI layout dir/NAME (NAME: microscaling, demo)
#   REGISTRY=host:port/prefix  also push both lists there (TLS_VERIFY=false for plain HTTP)
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=$(tr -d '[:space:]' < manifests/VERSION)
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
OUT=.image
ARCHES="amd64 arm64"
log() { printf '[image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

mkdir -p "$OUT"
for arch in $ARCHES; do
  log "building linux/$arch binaries"
  for pkg in .:microscaling ./test/roles:roles; do
    CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath \
      -ldflags "-s -w -X main.revision=$REVISION" -o "$OUT/linux-$arch/${pkg#*:}" "${pkg%%:*}"
  done
done
if [ ! -r /etc/ssl/certs/ca-certificates.crt ]; then
  log "installing Debian's ca-certificates (CA roots for the image)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ca-certificates >/dev/null
fi
cp /etc/ssl/certs/ca-certificates.crt "$OUT/ca-certificates.crt"
[ "${1:-}" = binaries ] && { log "binaries in $OUT"; exit 0; }

if ! command -v podman >/dev/null || [ ! -x /usr/sbin/runc ]; then
  log "installing Debian's podman and runc"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >/dev/null
fi
platforms=$(printf 'linux/%s,' $ARCHES); platforms=${platforms%,}
for spec in microscaling:manifests/Dockerfile demo:manifests/Dockerfile.demo; do
  name=${spec%%:*} file=${spec#*:}
  ref=microscaling/$name:$VERSION
  log "building $ref for $platforms"
  podman manifest rm "$ref" >/dev/null 2>&1 || true
  podman build -q --platform "$platforms" --manifest "$ref" \
    --build-arg VERSION="$VERSION" --build-arg REVISION="$REVISION" -f "$file" "$OUT" >/dev/null
  if [ -n "${OCI_DIR:-}" ]; then
    mkdir -p "$OCI_DIR"
    rm -rf "${OCI_DIR:?}/$name"
    podman manifest push -q --all "$ref" "oci:$OCI_DIR/$name:$VERSION"
    log "wrote $OCI_DIR/$name"
  fi
  if [ -n "${REGISTRY:-}" ]; then
    podman manifest push -q --all --tls-verify="${TLS_VERIFY:-true}" "$ref" "docker://$REGISTRY/$name:$VERSION"
    log "pushed $REGISTRY/$name:$VERSION"
  fi
done
log "done: microscaling/microscaling:$VERSION and microscaling/demo:$VERSION"
