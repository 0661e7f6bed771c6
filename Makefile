# The two commands that matter: `make demo` and `make test`.
GO ?= go


.PHONY: test deps demo binaries image image-binaries release cluster simulate fuzz bench-reaction bench-labels bench-scale bench-burst bench-sources

# Builds the real parts once (cached outside the clone), then runs every test
# with the race detector against them.
test: binaries deps
	MICROSCALING_BIN=$$(test/tools/build.sh) $(GO) test -race -count=1 -timeout 85m ./...

binaries:
	@test/tools/build.sh >/dev/null

# The controller and demo images, linux/amd64 + linux/arm64, offline with
# podman (REGISTRY=host/prefix pushes, OCI_DIR=dir writes OCI layouts).
image:
	test/tools/image.sh

# Only the binaries and CA roots in .image/, for docker buildx.
image-binaries:
	test/tools/image.sh binaries

# A release to REGISTRY=host/prefix: signed multi-arch images with an SPDX
# SBOM attestation, the chart as an OCI artifact, kubectl plugin archives
# and a krew manifest in dist/ (COSIGN_KEY=cosign.key, COSIGN_PASSWORD;
# TLS_VERIFY=false for a plain-HTTP registry). See docs/install.md.
release:
	test/tools/release.sh

# Debian's Chromium, for the dashboard's browser test, and the queue
# servers the sources are tested against (installed, never started here).
deps:
	@command -v chromium >/dev/null || { echo "installing Debian's chromium (the dashboard's browser test)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
	@for b in redis-server nats-server rabbitmq-server prometheus; do \
	  command -v $$b >/dev/null || [ -x /usr/sbin/$$b ] || { echo "installing Debian's redis, nats, rabbitmq and prometheus (the queue sources' tests)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server nats-server rabbitmq-server prometheus; break; }; \
	done

# QUEUE=rabbitmq|redis|nats runs the demo on another queue server (make deps installs them).
QUEUE ?= nsq
demo: binaries
	MICROSCALING_BIN=$$(test/tools/build.sh) $(GO) run ./test/demo --queue=$(QUEUE)

# A local control plane and nsqd for a person, until Ctrl-C.
cluster: binaries
	MICROSCALING_BIN=$$(test/tools/build.sh) $(GO) run ./test/cluster

simulate:
	$(GO) run ./test/simulate

fuzz:
	$(GO) test ./annotations -run '^$$' -fuzz FuzzParse -fuzztime 10m

# Reaction time of the controller on the real stack (25 trials); see BENCHMARKS.md.
bench-reaction: binaries
	MICROSCALING_BENCH=1 MICROSCALING_BIN=$$(test/tools/build.sh) $(GO) test -count=1 -v -run TestReactionTime ./test/e2e | grep -E 'REACTION|reaction time|^(ok|FAIL|---)'

# One label-sync pass over 1,000 Deployments and 20 images; see BENCHMARKS.md.
bench-labels: binaries
	MICROSCALING_BENCH=1 MICROSCALING_BIN=$$(test/tools/build.sh) $(GO) test -count=1 -v -run TestLabelSyncRequests ./test/e2e | grep -E 'LABELSYNC|^(ok|FAIL|---)'

# The controller at 100, 1,000 and 10,000 Deployments; see BENCHMARKS.md.
bench-scale: binaries
	MICROSCALING_CONTROLLER_GOMEMLIMIT=200MiB MICROSCALING_BENCH=1 MICROSCALING_BIN=$$(test/tools/build.sh) $(GO) test -count=1 -v -timeout 60m -run TestScaleBenchmark ./test/e2e | grep -E 'SCALE|LAG-BUCKETS|EVENTS|Warning|Events of|created in|caught up|^(ok|FAIL|---)'

# Every queue source's closed loop (burst + steady, outage, drain), RUNS times; see BENCHMARKS.md.
RUNS ?= 1
bench-sources: binaries
	MICROSCALING_BIN=$$(test/tools/build.sh) $(GO) test -count=$(RUNS) -v -timeout 120m -run TestSourcesCloseTheLoop ./test/e2e | grep -E 'SOURCE|^(ok|FAIL|---|\s+---)'

# Burst of 1,000 then 100 msg/s for 60 s on the real stack (5 runs); see BENCHMARKS.md.
bench-burst: binaries
	MICROSCALING_BENCH=1 MICROSCALING_BIN=$$(test/tools/build.sh) $(GO) test -count=1 -v -timeout 40m -run TestBurstBenchmark ./test/e2e | grep -E 'BURST|^(ok|FAIL|---|\s+---)'
