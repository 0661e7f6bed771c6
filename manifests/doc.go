// Package manifests holds what installs microscaling on a cluster: the
// kustomize bases (install, demo, sync-labels), the Helm chart and the
// Dockerfile. Its tests lint the chart and compare rendered output with
// golden files; the end-to-end tests apply the manifests to a real control
// plane.
package manifests
