# Kmesh: the two commands a new user needs are `sudo make demo` and
# `sudo make test`; everything they need is installed on the way.

GO      ?= go
BIN     := bin
PKGS    := ./...
# Debian packages the BPF toolchain needs (clang 14 is Debian 12's).
BPF_DEPS := clang llvm libbpf-dev bpftool
# Packages the tests and the demo use to build network namespaces.
NET_DEPS := iproute2 util-linux
# The Istio tier's tools, built from the tools/ module and kept across
# clones: go build relinks only what changed.
TOOLS_BIN ?= $(HOME)/.cache/kmesh-tools/bin
# Version and commit linked into the binaries (kmeshd --version, kmeshctl version).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
LDFLAGS := -X github.com/kmesh-go/kmesh/internal/version.Version=$(VERSION) \
           -X github.com/kmesh-go/kmesh/internal/version.Commit=$(COMMIT)
# Images: one per daemon under cmd/ that kmesh-image knows (kmeshctl goes
# into kmeshd's image); pushed by push-images to $(REGISTRY).
REGISTRY ?= localhost/kmesh
TAG      ?= $(VERSION)
IMAGES   := $(filter kmeshd kmesh-waypoint,$(notdir $(wildcard cmd/*)))

.PHONY: all build demo test test-unit test-e2e test-istio test-install tools images push-images print-tag lint fuzz generate check-generated deps-bpf deps-net deps-haproxy bench clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ ./cmd/...

## images: OCI image archives under bin/images/ (kmeshd.tar with kmeshctl, kmesh-waypoint.tar once
## cmd/kmesh-waypoint exists), static binaries FROM scratch, no Docker daemon (docs/install.md)
images:
	@[ -d cmd/kmesh-waypoint ] || echo "images: no cmd/kmesh-waypoint yet, so no kmesh-waypoint image"
	@mkdir -p $(BIN)/static $(BIN)/images $(TOOLS_BIN)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w $(LDFLAGS)" -o $(BIN)/static/ $(addprefix ./cmd/,$(IMAGES) kmeshctl)
	cd tools && $(GO) build -buildvcs=false -o $(TOOLS_BIN)/ ./cmd/kmesh-image
	$(TOOLS_BIN)/kmesh-image -bin $(BIN)/static -out $(BIN)/images -repo $(REGISTRY) -tag $(TAG) \
		-version $(VERSION) -commit $(COMMIT) -arch $$($(GO) env GOARCH) \
		-created $$(git log -1 --format=%ct 2>/dev/null || echo 0) $(PUSH) $(IMAGES)

## push-images: make images, and push them to REGISTRY=host/path (credentials: ~/.docker/config.json)
push-images:
	@[ "$(REGISTRY)" != localhost/kmesh ] || { echo "push-images: set REGISTRY=host/path"; exit 1; }
	$(MAKE) images PUSH=-push

## print-tag: the tag make images gives the images
print-tag:
	@echo $(TAG)

## demo: two nodes, a client and three hello pods; requests to the service address
demo: deps-net
	$(GO) run ./examples/demo $(DEMO_FLAGS)

## test: everything CI runs: formatting, vet, generated code, unit, BPF, e2e (file, go-control-plane
## and the real istiod + kube-apiserver) and fuzz tests
test: deps-net deps-haproxy lint check-generated test-unit test-e2e test-install test-istio fuzz

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed on:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	$(GO) vet -tags e2e ./test/...
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }

# Tests that need root fail instead of skipping: a test run that skipped the BPF,
# dataplane and e2e tiers proves nothing. Without root, run
# `make test-unit KMESH_REQUIRE_PRIVILEGED=0` to see the skips instead.
KMESH_REQUIRE_PRIVILEGED ?= 1
export KMESH_REQUIRE_PRIVILEGED

test-unit:
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

test-e2e:
	$(GO) test -race -count=1 -tags e2e -timeout 20m -skip '^TestIstio' ./test/e2e/...

## tools: etcd + kube-apiserver (one binary), istiod's pilot-discovery, kmesh-chart (helm lint and
## template), Istio's CRDs and the Gateway API's (experimental channel), into TOOLS_BIN; about 10 minutes cold on 2 idle cores (15 on a busy
## machine), seconds when nothing changed (docs/istio.md)
tools:
	@mkdir -p $(TOOLS_BIN)
	cd tools && $(GO) build -buildvcs=false -o $(TOOLS_BIN)/ ./cmd/kube-control-plane ./cmd/hbone-peer ./cmd/kmesh-chart istio.io/istio/pilot/cmd/pilot-discovery
	install -m 0644 "$$(cd tools && $(GO) list -m -f '{{.Dir}}' istio.io/istio)/manifests/charts/base/files/crd-all.gen.yaml" $(TOOLS_BIN)/istio-crds.yaml
	d="$$(cd tools && $(GO) list -m -f '{{.Dir}}' sigs.k8s.io/gateway-api)/config/crd/experimental" && \
	for f in $$(ls "$$d"/gateway.networking*.yaml | grep -v _vap_); do echo "---"; cat "$$f"; done > $(TOOLS_BIN)/gateway-api-crds.yaml
	cd tools && $(GO) vet ./...

## test-install: the image builder (archives load, binaries run) and the Helm chart (lint, template,
## schema, Istio's values), in the tools module
test-install:
	cd tools && $(GO) test -count=1 ./cmd/kmesh-image/ ./cmd/kmesh-chart/

## test-istio: the e2e tier on the stock istiod and a real kube-apiserver; prints the push-to-map latency
test-istio: deps-net tools
	@rm -f $(TOOLS_BIN)/../push-latency.txt
	KMESH_TOOLS_DIR=$(TOOLS_BIN) KMESH_LATENCY_REPORT=$(TOOLS_BIN)/../push-latency.txt \
	$(GO) test -race -count=1 -tags e2e -timeout 20m -run '^TestIstio' ./test/e2e/
	@cat $(TOOLS_BIN)/../push-latency.txt 2>/dev/null || true

## fuzz: every parser of outside input, for a bounded time each (test/fuzz.sh: why a run may be repeated once)
fuzz:
	GO=$(GO) test/fuzz.sh FuzzParse ./internal/source/file/ 20s
	GO=$(GO) test/fuzz.sh FuzzTranslateWorkload ./internal/source/xds/ 20s
	GO=$(GO) test/fuzz.sh FuzzDecodeWorkload ./internal/source/xds/ 20s
	GO=$(GO) test/fuzz.sh FuzzDecodeDeltaResponse ./internal/source/xds/ 20s

## generate: rebuild the eBPF objects and their Go twins with bpf2go
generate: deps-bpf
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > bpf/include/vmlinux.h
	$(GO) generate ./internal/bpf/...

## check-generated: fail when the committed bpf2go output is stale
check-generated: generate
	@if [ -n "$$(git status --porcelain -- internal/bpf)" ]; then \
		git status --porcelain -- internal/bpf; git diff --stat -- internal/bpf; \
		echo "committed bpf2go output is stale: run 'make generate' and commit"; exit 1; fi

deps-bpf:
	@command -v clang >/dev/null && command -v bpftool >/dev/null && [ -f /usr/include/bpf/bpf_helpers.h ] || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(BPF_DEPS); }

# deps-haproxy: the benchmark's proxy hops, and bench/haproxy's test of its mutual-TLS pair.
deps-haproxy:
	@command -v iptables >/dev/null && command -v haproxy >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables haproxy; }

deps-net:
	@command -v ip >/dev/null && command -v nsenter >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(NET_DEPS); }

## bench: issue 6's benchmark (root, about 12 minutes; BENCH_FLAGS=-quick for a short run):
## direct vs kmesh vs iptables vs HAProxy with fortio, control plane at 10,000 services /
## 100,000 endpoints, the Istio tier at 2,000 Services / 10,000 Pods (stock istiod, needs make tools); writes bench/results/<time>/ and README's Benchmarks section. Installs
## iptables and haproxy (apt) and fortio v1.66.5 (newer releases do not build here) into bin/.
## Then the Go benchmarks of the config-to-maps path (dataplane; one endpoint change from xDS and
## from a directory config at 10,000 services / 100,000 endpoints), and the figures of kmeshd restarts under
## traffic (rates, each window without a ready kmeshd) from the e2e test that proves none fails.
bench: deps-net deps-haproxy
	@[ "$$($(BIN)/fortio version 2>/dev/null)" = 1.66.5 ] || GOBIN=$(abspath $(BIN)) $(GO) install fortio.org/fortio@v1.66.5
	$(GO) build -o $(BIN)/kmesh-bench ./bench/cmd/kmesh-bench
	$(BIN)/kmesh-bench -fortio $(BIN)/fortio -readme README.md $(BENCH_FLAGS)
	$(GO) test -run '^$$' -bench . -benchtime 3x ./internal/dataplane/
	$(GO) test -run '^$$' -bench 'OneEndpointChangeAtScale/services=10000' -benchtime 200x -timeout 20m ./internal/source/xds/
	$(GO) test -run '^$$' -bench 'DirSource_OneEndpointChange/services=10000' -benchtime 200x -timeout 20m ./internal/source/file/
	KMESH_RESTART_REPORT=$(abspath $(BIN))/restart-under-traffic.txt \
	$(GO) test -count=1 -tags e2e -run '^TestRestartAndUpgradeUnderTraffic$$' ./test/e2e/
	@cat $(BIN)/restart-under-traffic.txt

clean:
	rm -rf $(BIN) bpf/include/vmlinux.h
