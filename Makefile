# mesh — a service mesh for VM fleets.
# `make demo` runs a live local mesh; `make test` runs every test.

GO       ?= go
# One version for `mesh version` and the packages (packaging/version.sh:
# 1.2.3 on a tag, 1.2.3+git<N>.<sha> after it); `make package VERSION=...`
# sets both.
VERSION  ?= $(shell packaging/version.sh)
VERSION  := $(VERSION)
COMMIT   ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -s -w -X github.com/meshvm/mesh/buildinfo.Version=$(VERSION) -X github.com/meshvm/mesh/buildinfo.Commit=$(COMMIT)
CONSUL   := bin/consul
JAEGER   := bin/jaeger
KUBE_APISERVER := bin/kube-apiserver
ETCD     := bin/etcd
H2SPEC   := bin/h2spec
PKGS     := ./...
TEST_TIMEOUT ?= 25m
FUZZTIME ?= 50000x
FUZZMINIMIZE ?= 2000x

.PHONY: prometheus test-prometheus test-ui all build consul jaeger pebble h2spec kube-apiserver etcd test test-k8s test-unit fuzz bench bench-go bench-scale bench-wrk bench-cpu bench-redis bench-mtls bench-gateway bench-intercept test-netns demo lint clean package test-packaging test-packaging-fast test-packaging-upgrade test-packaging-rolling test-packaging-redirect

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/mesh .

# A real Consul (v1.14.11, MPL-2.0) from the module proxy, for tests and the demo.
consul: $(CONSUL)
$(CONSUL): tools/consul/go.mod tools/consul/go.sum
	cd tools/consul && $(GO) build -o ../../$(CONSUL) github.com/hashicorp/consul
	@touch $(CONSUL)

# A real Jaeger (v1.76.0 all-in-one, v2 binary) for the tracing tests. Its
# own module: its graph pins older gRPC and OTel collector versions. The
# first build takes ~4 minutes and ~2 GB of memory.
jaeger: $(JAEGER)
$(JAEGER): tools/jaeger/go.mod tools/jaeger/go.sum
	cd tools/jaeger && $(GO) build -o ../../$(JAEGER) github.com/jaegertracing/jaeger/cmd/jaeger
	@touch $(JAEGER)

# A real ACME server (Pebble v2.10.3, and its DNS) for the edge's
# automatic-certificate tests. Its own module.
PEBBLE := bin/pebble
pebble: $(PEBBLE)
$(PEBBLE): tools/pebble/go.mod tools/pebble/go.sum
	cd tools/pebble && $(GO) build -o ../../bin/pebble-challtestsrv github.com/letsencrypt/pebble/v2/cmd/pebble-challtestsrv \
		&& $(GO) build -o ../../$(PEBBLE) github.com/letsencrypt/pebble/v2/cmd/pebble
	@touch $(PEBBLE)

# A real kube-apiserver (v1.33.13) and etcd (v3.6.16) from the module proxy,
# for the Kubernetes source's tests (make test-k8s). Each in its own tools
# module, out of the main module's graph. The cold kube-apiserver build takes
# ~4 minutes and ~2.2 GB; the version ldflags let clients parse /version.
KUBE_VERSION := v1.33.13
KUBE_LDFLAGS := -s -w $(foreach p,k8s.io/component-base/version k8s.io/client-go/pkg/version,-X $(p).gitVersion=$(KUBE_VERSION) -X $(p).gitMajor=1 -X $(p).gitMinor=33)
kube-apiserver: $(KUBE_APISERVER)
$(KUBE_APISERVER): tools/kube/go.mod tools/kube/go.sum
	cd tools/kube && CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(KUBE_LDFLAGS)' -o ../../$(KUBE_APISERVER) k8s.io/kubernetes/cmd/kube-apiserver
	@touch $(KUBE_APISERVER)

etcd: $(ETCD)
$(ETCD): tools/etcd/go.mod tools/etcd/go.sum
	cd tools/etcd && CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o ../../$(ETCD) go.etcd.io/etcd/server/v3
	@touch $(ETCD)

# h2spec (v2.2.1), HTTP/2 conformance, for the agent's h2c listeners. Its
# own module, like Consul's.
h2spec: $(H2SPEC)
$(H2SPEC): tools/h2spec/go.mod tools/h2spec/go.sum
	cd tools/h2spec && $(GO) build -o ../../$(H2SPEC) github.com/summerwind/h2spec/cmd/h2spec
	@touch $(H2SPEC)

# Every test, against real parts (Consul, HTTP and gRPC servers), then a
# short fuzzing pass over each parser.
test: build $(CONSUL) $(JAEGER) $(PEBBLE) $(H2SPEC) lint
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(PKGS)
	$(MAKE) fuzz
	$(MAKE) test-packaging-fast

# A real Prometheus (v3.16, module v0.316.0) from the module proxy, for
# docs/prometheus.yml and docs/grafana-dashboard.json. Its own module: a big
# graph (cloud SDKs for service discovery); built with Consul's service
# discovery only (Prometheus's own remove_all_sd tags), which keeps the
# cold build to minutes.
PROMETHEUS := bin/prometheus
prometheus: $(PROMETHEUS)
$(PROMETHEUS): tools/prometheus/go.mod tools/prometheus/go.sum
	cd tools/prometheus && CGO_ENABLED=0 $(GO) build -trimpath -tags remove_all_sd,enable_consul_sd -ldflags '-s -w' -o ../../$(PROMETHEUS) github.com/prometheus/prometheus/cmd/prometheus
	@touch $(PROMETHEUS)

# docs/prometheus.yml against that Prometheus: agents found through Consul
# and scraped, every dashboard expression returns data (build tag
# prometheus). ~2 minutes once built.
test-prometheus: $(PROMETHEUS) $(CONSUL) $(JAEGER)
	$(GO) vet -tags prometheus ./meshctl/
	$(GO) test -count=1 -tags prometheus -timeout 10m -run TestPrometheusScrapesTheMesh -v ./meshctl/

# The dashboard (/ui/ on mesh control's admin listener) in a real headless
# Chromium (Debian's chromium; build tag browser): mesh control, agents,
# apps and Consul as real processes. ~1 minute.
test-ui: $(CONSUL)
	$(GO) vet -tags browser ./meshctl/
	$(GO) test -count=1 -tags browser -timeout 10m -run 'TestDashboard' -v ./meshctl/

# The Kubernetes source's end-to-end tests against a real kube-apiserver
# and etcd (build tag kube; a missing binary fails them). ~4 minutes to
# build both cold, then ~2 minutes of tests.
test-k8s: $(KUBE_APISERVER) $(ETCD) $(CONSUL)
	$(GO) vet -tags kube ./controlplane/kubetest/
	$(GO) test -count=1 -tags kube -timeout 15m -v ./controlplane/kubetest/

# Transparent interception end to end (as root, ~1-2 minutes): two network
# namespaces joined by veth, real nftables, a real Consul server and client,
# agents under their own uid, rules from `mesh redirect-traffic`, curl,
# urllib and redis-cli unmodified (build tag netns; a missing part fails).
test-netns: $(CONSUL)
	$(GO) vet -tags netns ./redirect/netnstest/
	$(GO) test -count=1 -tags netns -timeout 10m -v ./redirect/netnstest/

# Every fuzz target (any `func Fuzz...` in a _test.go file, found anew each
# run), for a fixed number of executions so the work does not depend on the
# machine's load: about a minute in all on 2 cores, once the instrumented
# test binaries are in the build cache. Minimising each new interesting
# input is bounded by a count too (by default it is 60 s, each time).
# FUZZTIME=5m for a longer soak.
fuzz:
	@set -e; grep -rHoE '^func Fuzz[A-Za-z0-9_]+' --include='*_test.go' --exclude-dir=tools --exclude-dir=.cache --exclude-dir=dist . \
	| sed -E 's|^(.*)/[^/]+_test\.go:func (Fuzz[A-Za-z0-9_]+)$$|\1 \2|' | sort -u \
	| while read -r pkg target; do \
		echo "fuzz $$pkg $$target ($(FUZZTIME))"; \
		$(GO) test -run='^$$' -fuzz="^$$target$$" -fuzztime=$(FUZZTIME) -fuzzminimizetime=$(FUZZMINIMIZE) $$pkg; \
	done

bench: bench-go bench-wrk bench-cpu bench-redis

bench-go:
	$(GO) test -run='^$$' -bench=. -benchmem $(PKGS)

# Issue 14's fleet benchmark from a real Consul: 10,000 services x 10
# instances, 1,000 scoped delta agents, then 200 unscoped SotW agents, one
# run (docs/benchmarks.md). Heavy: serialised with the other engineers'
# benchmarks by flock. BENCH_FLEET=services,scoped,unscoped[,changes].
BENCH_FLEET ?= 10000,1000,200,30
BENCH_LOCK  ?= $(or $(wildcard /work/notes/bench.lock),/tmp/mesh-bench.lock)
bench-scale: $(CONSUL)
	$(GO) test -c -o bin/controlplane.test ./controlplane/
	cd controlplane && flock $(BENCH_LOCK) env MESH_BENCH_FLEET=$(BENCH_FLEET) ../bin/controlplane.test \
		-test.run='^$$' -test.bench='ConsulFleet' -test.benchtime=1x -test.timeout=60m

# wrk against direct, mesh one and two hops, nginx one and two hops.
bench-wrk: build
	bench/wrk.sh

# redis-benchmark direct vs through two agents (raw TCP relay).
bench-redis: build
	bench/redis.sh

# HTTPS through mesh gateway into the mesh vs nginx terminating TLS: CPU per
# request and req/s, keep-alive and a new connection per request.
bench-gateway: build $(CONSUL)
	bench/gateway.sh

# Two-hop CPU per request: transparent interception vs the explicit
# outbound listener, same run, in network namespaces (as root).
bench-intercept: build
	bench/intercept.sh

# CPU per request per hop of the mesh vs nginx, latency added, memory per connection.
bench-cpu: build
	bench/cpu.sh

# Two-hop CPU per request and req/s with mTLS between the agents vs plain text.
bench-mtls: build
	bench/mtls.sh

# Built and run as bin/demo, not with `go run` (which exits 1 when its
# program is interrupted): Ctrl-C stops everything and exits 0.
# DEMO_FLAGS, e.g. DEMO_FLAGS='-duration 60s -every 200ms'.
DEMO_FLAGS ?=
demo: build $(CONSUL)
	$(GO) build -o bin/demo ./demo
	bin/demo $(DEMO_FLAGS)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)

# .deb and .rpm into dist/ with nfpm (a Go tool in tools/nfpm, kept out of
# the main module's graph), plus dist/mesh.deb and dist/mesh.rpm pointing at
# them (what packaging/ansible/inventory.example.ini installs). The package
# version is VERSION, the binary's; set PKG_MAINTAINER for a release.
NFPM           := bin/nfpm
PKG_MAINTAINER ?= mesh maintainers <maintainers@meshvm.invalid>
PKG_ARCH       ?= $(shell $(GO) env GOARCH)

$(NFPM): tools/nfpm/go.mod tools/nfpm/go.sum
	cd tools/nfpm && $(GO) build -o ../../$(NFPM) github.com/goreleaser/nfpm/v2/cmd/nfpm
	@touch $(NFPM)

package: build $(NFPM)
	@mkdir -p dist
	rm -f dist/mesh_*.deb dist/mesh-*.rpm dist/mesh.deb dist/mesh.rpm
	packaging/changelog.sh '$(VERSION)' '$(PKG_MAINTAINER)' | gzip -9n > dist/changelog.Debian.gz
	for fmt in deb rpm; do \
		MESH_PKG_VERSION='$(VERSION)' MESH_MAINTAINER='$(PKG_MAINTAINER)' GOARCH='$(PKG_ARCH)' \
			$(NFPM) package -f packaging/nfpm.yaml -p $$fmt -t dist/ || exit 1; \
	done
	cd dist && ln -s mesh_*.deb mesh.deb && ln -s mesh-*.rpm mesh.rpm

# Seconds: systemd-analyze verify on the units, the shipped configs through
# `mesh config validate`, shellcheck, ansible-lint, the Ansible role's
# templates rendered and validated. Part of `make test`.
test-packaging-fast: build
	packaging/test/fast.sh

# About 3 minutes, as root (plus 2 for the first debootstrap, cached in
# .cache/): lintian on the .deb; dpkg -i, upgrade and purge in a Debian root;
# the .rpm's scriptlets via rpm --root; the Ansible role run twice against
# that root over a chroot connection (second run: changed=0); the root
# booted with systemd-nspawn, mesh-control running in the unit's sandbox.
# It also checks Type=notify start/reload/watchdog/stop of both units under
# systemd; MESH_TEST_SDNOTIFY=0 skips those (and their ~30 s wait). Last
# (~25 s more), a package upgrade under load: see test-packaging-upgrade.
test-packaging: package $(CONSUL)
	GO='$(GO)' packaging/test/slow.sh

# mesh-redirect@ under a real systemd (as root, ~1 minute once the Debian
# root is cached; no package needed): a root booted with systemd-nspawn where
# starting mesh-agent@demo (interception on) installs table inet mesh first,
# SIGKILL of the agent keeps the rules while systemd restarts it, and
# systemctl stop removes them.
test-packaging-redirect: $(CONSUL)
	GO='$(GO)' packaging/test/redirect.sh

# Only the last step of test-packaging (as root, ~25 s): mesh-agent@orders,
# upgraded from an older package by dpkg -i in a Debian root booted on the
# host's network (127.0.66.0/24), next to a second instance on the host,
# under load from two callers with retries (Consul-direct and xDS), loses
# no request.
test-packaging-upgrade: package $(CONSUL)
	GO='$(GO)' packaging/test/upgrade.sh

# Only the rolling step of test-packaging (as root, ~2-3 minutes): the
# Ansible role upgrading three booted roots host by host, stopped by an
# injected failure on the second; handlers restarting or reloading by
# `mesh config diff`. Builds its older package itself.
test-packaging-rolling: package $(CONSUL)
	@set -e; mkdir -p .cache/packaging; export GO='$(GO)'; old=$$(mktemp -d $(CURDIR)/.cache/packaging/old.XXXXXX); trap 'rm -rf "$$old"' EXIT; \
		. packaging/test/lib.sh; deb=$$(echo dist/mesh_*.deb); \
		GO='$(GO)' packaging/test/rolling.sh "$$deb" "$$(old_deb "$$deb" 0.0.0~oldtest "$$old")"

clean:
	rm -rf bin dist
