#!/usr/bin/env bash
# release.sh publishes release VERSION (manifests/VERSION) to a registry, in
# a form users can verify:
#   - the controller and demo images, linux/amd64 + linux/arm64, one index
#     each (test/tools/image.sh), signed with cosign (key-based, every
#     platform's manifest too) and with an SPDX SBOM of the controller
#     attached as a signed attestation (cosign attest --type spdxjson);
#   - the Helm chart as an OCI artifact, its image pinned to the signed
#     index's digest;
#   - kubectl plugin archives per platform and a krew manifest;
#   - the release notes: docs/CHANGELOG.md must have a section for VERSION.
# Everything it writes locally lands in DIST.
#
# Usage: REGISTRY=host[:port]/prefix COSIGN_KEY=cosign.key test/tools/release.sh
#   COSIGN_PASSWORD  the key's password (cosign reads it)
#   TLS_VERIFY=false a registry on plain HTTP (a local one)
#   DIST=dir         where archives, the chart and the SBOM go (default dist)
#   RELEASE_URL=url  where the plugin archives will be downloaded from
#                    (default the GitHub release of vVERSION)
#   TLOG=true        also upload signatures to the public transparency log
#                    (off by default: a key-based signature verifies
#                    without it, and a local run has no internet)
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=$(tr -d '[:space:]' < manifests/VERSION)
REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
DIST=${DIST:-dist}
RELEASE_URL=${RELEASE_URL:-https://github.com/microscaling/microscaling/releases/download/v$VERSION}
TLS_VERIFY=${TLS_VERIFY:-true}
TLOG=${TLOG:-false}
log() { printf '[release %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { log "$*"; exit 2; }

[ -n "${REGISTRY:-}" ] || fail "REGISTRY=host[:port]/prefix is required"
[ -n "${COSIGN_KEY:-}" ] && [ -r "$COSIGN_KEY" ] || fail "COSIGN_KEY=path of a cosign private key is required (cosign generate-key-pair)"
grep -q "^## $VERSION\b" docs/CHANGELOG.md || fail "docs/CHANGELOG.md has no section '## $VERSION'"

BIN=$(test/tools/build.sh tools | tail -1)
crane() { "$BIN/crane-"* "$@"; }
helm() { "$BIN/helm-"* "$@"; }
cosign() { "$BIN/cosign-"* "$@"; }
insecure=() plain=() crane_insecure=()
if [ "$TLS_VERIFY" = false ]; then
  insecure=(--allow-http-registry --allow-insecure-registry) plain=(--plain-http) crane_insecure=(--insecure)
fi
rm -rf "$DIST" && mkdir -p "$DIST"
export HELM_CACHE_HOME="$PWD/$DIST/.helm/cache" HELM_CONFIG_HOME="$PWD/$DIST/.helm/config" HELM_DATA_HOME="$PWD/$DIST/.helm/data"

log "images"
REGISTRY="$REGISTRY" TLS_VERIFY="$TLS_VERIFY" test/tools/image.sh
image="$REGISTRY/microscaling"
digest=$(crane digest "${crane_insecure[@]}" "$image:$VERSION")
demo_digest=$(crane digest "${crane_insecure[@]}" "$REGISTRY/demo:$VERSION")
log "controller $image@$digest"

log "SBOM (SPDX) of the controller"
go run ./test/tools/sbom -name "microscaling-$VERSION" -version "$VERSION" .image/linux-amd64/microscaling .image/linux-arm64/microscaling > "$DIST/microscaling-$VERSION.spdx.json"

log "signing and attesting"
sign=(--key "$COSIGN_KEY" --tlog-upload="$TLOG" --yes "${insecure[@]}")
for ref in "$image@$digest" "$REGISTRY/demo@$demo_digest"; do
  cosign sign "${sign[@]}" --recursive -a "org.opencontainers.image.version=$VERSION" -a "org.opencontainers.image.revision=$REVISION" "$ref" >&2
done
cosign attest "${sign[@]}" --type spdxjson --predicate "$DIST/microscaling-$VERSION.spdx.json" "$image@$digest" >&2

log "chart"
chart="$DIST/chart/microscaling"
mkdir -p "$DIST/chart"
cp -r manifests/helm/microscaling "$chart"
# The published chart installs the signed image by digest.
sed -i -e "s|^  repository: .*|  repository: $image|" -e "s|^  digest: \"\".*|  digest: \"$digest\"|" "$chart/values.yaml"
grep -q "digest: \"$digest\"" "$chart/values.yaml" || fail "could not pin the chart's image digest"
helm package "$chart" --version "$VERSION" --app-version "$VERSION" -d "$DIST" >&2
helm push "$DIST/microscaling-$VERSION.tgz" "oci://$REGISTRY/charts" "${plain[@]}" >&2
rm -rf "$DIST/chart" "$DIST/.helm"

log "kubectl plugin archives"
platforms="linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64"
krew="$DIST/microscaling.yaml"
cat > "$krew" <<EOF
apiVersion: krew.googlecontainertools.github.com/v1alpha2
kind: Plugin
metadata:
  name: microscaling
spec:
  version: v$VERSION
  homepage: https://github.com/microscaling/microscaling
  shortDescription: State of queue-driven autoscaling, from the API server
  description: |
    Shows each Deployment microscaling scales and the condition its
    controller keeps on it, with your own credentials (status), checks
    manifests' microscaling.com/* annotations (validate) and opens the
    controller's dashboard (dashboard).
  platforms:
EOF
for p in $platforms; do
  os=${p%/*} arch=${p#*/} exe=kubectl-microscaling
  [ "$os" = windows ] && exe=kubectl-microscaling.exe
  dir=$(mktemp -d)
  CGO_ENABLED=0 GOOS=$os GOARCH=$arch go build -trimpath -ldflags "-s -w -X main.revision=$REVISION" -o "$dir/$exe" .
  cp LICENSE "$dir/"
  archive="kubectl-microscaling_${VERSION}_${os}_${arch}.tar.gz"
  tar -C "$dir" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@${SOURCE_DATE_EPOCH:-0}" -czf "$DIST/$archive" "$exe" LICENSE
  rm -rf "$dir"
  sum=$(sha256sum "$DIST/$archive" | cut -d' ' -f1)
  cat >> "$krew" <<EOF
  - selector:
      matchLabels:
        os: $os
        arch: $arch
    uri: $RELEASE_URL/$archive
    sha256: $sum
    bin: $exe
EOF
  log "$archive"
done
(cd "$DIST" && sha256sum -- *.tar.gz *.tgz *.spdx.json > SHA256SUMS)

cat >&2 <<EOF
[release] done: microscaling $VERSION
  image   $image@$digest (and :$VERSION)
  demo    $REGISTRY/demo@$demo_digest
  chart   oci://$REGISTRY/charts/microscaling --version $VERSION
  plugin  $DIST/kubectl-microscaling_${VERSION}_*.tar.gz, krew manifest $krew
Verify:
  cosign verify --key cosign.pub $image@$digest
  cosign verify-attestation --key cosign.pub --type spdxjson $image@$digest
EOF
echo "$image@$digest"
