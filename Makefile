# Makefile for hsmsigner. `make test` installs the Debian packages the tests
# need (see deps) and runs every test with the race detector.

GO ?= go

# Debian packages the tests need, a command each one provides, and files
# of those that provide no command (p11-kit-modules: the client module of
# p11-kit's remote PKCS#11, for the network HSM test).
DEB_PACKAGES := softhsm2 opensc openssl protobuf-compiler curl systemd p11-kit p11-kit-modules iproute2
DEB_COMMANDS := softhsm2-util pkcs11-tool openssl protoc curl systemd-analyze p11-kit ss
DEB_FILES := /usr/lib/*/pkcs11/p11-kit-client.so

.PHONY: all build vet test fault-hsm dev deb bench bench-scale bench-daemon bench-latency bench-processes bench-ocsp bench-tsa bench-xroad bench-abuse soak crash fuzz generate deps

all: build

build:
	$(GO) build ./...

vet:
	$(GO) vet ./...

test: deps
	$(GO) test -race -count=1 -timeout 30m ./...

# fault-hsm: the network HSM (SoftHSM behind `p11-kit server`) killed and
# restarted 20 times under signing load, instead of the 3 times of
# `make test` (about 3 minutes).
fault-hsm: deps
	FAULT_HSM_RESTARTS=20 $(GO) test -race -count=1 -timeout 30m -run '^TestNetworkHSMVanishesAndReturns$$' -v ./cmd/signerd/

# dev runs signerd on a throwaway SoftHSM token under ./signer-dev.
# It builds the binary first and runs it directly: `go run` turns a clean
# stop on Ctrl-C into exit status 1, and make would print "Error 1".
dev: deps
	$(GO) build -o signer-dev/bin/signerd ./cmd/signerd
	./signer-dev/bin/signerd dev --dir signer-dev

# deb builds hsmsigner_VERSION_ARCH.deb here (cmd/internal/mkdeb, nfpm as
# a Go library): signerd and signerctl with VERSION linked in, their man
# pages and completions, the units, sysusers.d and tmpfiles.d files, the
# configuration /etc/signerd/signerd.toml (signerd refuses it until it is
# edited) and the maintainer scripts of systemd/deb/. Needs go, gcc and git.
# VERSION is the package's version source; mkdeb turns it into a Debian
# version (v1.2.3-4-gabc1234 is 1.2.3+4.gabc1234).
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null)
deb:
	@if [ -z "$(VERSION)" ]; then echo "deb: not a git checkout; give VERSION=v1.2.3" >&2; exit 1; fi
	$(GO) run ./cmd/internal/mkdeb --describe "$(VERSION)" --out .

# bench: the hsm pool against raw C_Sign in the same run (pool/raw).
bench: deps
	$(GO) test -run '^$$' -bench BenchmarkSign -benchtime 2000x ./hsm/
	$(MAKE) bench-scale

# bench-scale: one token grown to 10, 100 and 1,000 EC keys with a
# certificate each (made once per run through raw PKCS#11 and the state):
# the daemon's start, ListKeys and ListCerts over its socket, Sign and
# GetSigningInfo per call, the Go heap and RSS, each beside its raw
# counterpart; then 1,000 keys generated through the socket beside 1,000
# raw C_GenerateKeyPair. About 10 minutes.
bench-scale: deps
	$(GO) test -run '^$$' -bench 'BenchmarkScale$$' -benchtime 1x -timeout 60m ./signer/
	$(GO) test -run '^$$' -bench 'BenchmarkKeygenScale$$' -benchtime 1x -timeout 60m ./signer/

# bench-daemon: signing through signerd's socket against in-process hsm
# signing in the same run (daemon/raw).
bench-daemon: deps
	$(GO) test -run '^$$' -bench 'BenchmarkDaemonVsRaw|BenchmarkAuditCost' -benchtime 3000x ./signer/

# bench-processes: signerctl bench --raw against signerd dev, each its own
# process, then the same against the thinnest server there is (the
# README's separate-process table and its floor; about 4 minutes).
# bench-ocsp: GetOCSPResponses against GetStatus on the daemon's socket,
# a 100-certificate call against single calls (with its floor), and 1,000
# certificates watched against a local responder.
bench-ocsp: deps
	$(GO) test -run '^$$' -bench BenchmarkOCSPResponses -benchtime 1x ./signer/
	$(GO) test -run '^$$' -bench BenchmarkThousandCertificates -benchtime 3x ./ocsp/

# bench-tsa: the built-in TSA's tokens/s through POST /tsa on the HTTP
# socket against raw C_Sign with the same key in the same run (tsa/raw,
# p50/p99), ECDSA P-256 and RSA-2048 at 2 and 8 callers; then bursts of
# 1,000 concurrent upstream stamps batched in windows of 5, 20 and 100 ms
# against a loopback openssl TSA (upstream calls per 1,000, the wait less
# one round trip). About a minute.
bench-tsa: deps
	$(GO) test -run '^$$' -bench BenchmarkTSAVsRaw -benchtime 3200x ./signer/
	$(GO) test -run '^$$' -bench BenchmarkUpstreamBatching -benchtime 3x ./tsa/

# bench-xroad: X-Road's KeyService/Sign over loopback TCP and mutual TLS
# against signer.v1 Sign over the Unix socket, same key, in one run.
bench-xroad: deps
	$(GO) test -run '^$$' -bench BenchmarkXRoadVsUnix -benchtime 4000x ./signer/xroad/

# bench-abuse: a well-behaved client's Sign p99 alone and while
# misbehaving clients go on (silent connections, a PING flood, a
# connection flood, 2 GiB message prefixes, unread SignStreams), each
# alone and all at once: both p99s and their ratio (goal ≤ 2). About a
# minute.
bench-abuse: deps
	$(GO) test -run '^$$' -bench BenchmarkAbuseP99 -benchtime 1x -timeout 30m ./signer/

# soak: signerd as its own process signs SOAK_SIGNATURES times (ECDSA
# P-256 SignBatch of 63 and a Sign, round after round) over
# SOAK_CONNECTIONS connections open at once (connections_per_uid and calls_per_uid raised
# above them; every connection used, at most SOAK_IN_FLIGHT calls in
# flight at once), and prints its RSS, descriptors and goroutines from /proc
# and /metrics at the start, middle and end; the test fails unless they
# stay flat. make test runs it with 20,000 signatures.
SOAK_SIGNATURES ?= 1000000
SOAK_CONNECTIONS ?= 1000
SOAK_IN_FLIGHT ?= 256
soak: deps
	SIGNERD_SOAK_SIGNATURES=$(SOAK_SIGNATURES) SIGNERD_SOAK_CONNECTIONS=$(SOAK_CONNECTIONS) SIGNERD_SOAK_IN_FLIGHT=$(SOAK_IN_FLIGHT) \
		$(GO) test -count=1 -run '^TestSoak$$' -v -timeout 120m ./cmd/signerd/

# crash: signerd SIGKILLed ROUNDS times at a random moment while two
# officers change keys and certificates and a client signs; after each
# kill the audit log, the state, every acknowledged change and signature,
# and what the restarted daemon reports are checked (TestCrashConsistency;
# make test runs 50 rounds, about 70 s). SIGNERD_CRASH_SEED=N repeats the
# run whose seed the test logged.
ROUNDS ?= 500
crash: deps
	SIGNERD_CRASH_ROUNDS=$(ROUNDS) $(GO) test -count=1 -run '^TestCrashConsistency$$' -v -timeout 0 ./cmd/signerd/

# bench-latency: one caller, one call at a time: the p50 of Sign through
# the daemon's socket (shared SignStream and unary) against raw C_Sign and
# the socket floor in the same run, ECDSA P-256 and RSA-2048, with the
# per-stage breakdown of the daemon's call (µs). About a minute.
bench-latency: deps
	$(GO) test -run '^$$' -bench BenchmarkLatency -benchtime 3200x ./signer/

bench-processes: deps
	$(GO) test -run '^$$' -bench BenchmarkSeparateProcesses -benchtime 1x -timeout 30m ./cmd/signerctl/
	$(GO) test -run '^$$' -bench BenchmarkSocketFloor -benchtime 1x -timeout 30m ./signer/

# generate regenerates the committed protobuf code: signer/api and X-Road's
# protocol in signer/xroad/xroadpb. It needs protoc (protobuf-compiler) and,
# on PATH or in $(go env GOPATH)/bin, protoc-gen-go and protoc-gen-go-grpc
# at the versions the committed code names.
PROTOC_GEN_GO := google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC := google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.2
generate:
	@export PATH="$$PATH:$$($(GO) env GOPATH)/bin"; missing=; \
	for c in protoc protoc-gen-go protoc-gen-go-grpc; do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -n "$$missing" ]; then \
		echo "make generate: missing$$missing. Install them with:" >&2; \
		echo "  apt-get install -y protobuf-compiler" >&2; \
		echo "  go install $(PROTOC_GEN_GO) $(PROTOC_GEN_GO_GRPC)" >&2; \
		exit 1; \
	fi; \
	$(GO) generate ./signer/api/ ./signer/xroad/xroadpb/

# fuzz runs each fuzz target of the parsers that face the outside for
# FUZZTIME; the seed corpora live in each package's testdata/fuzz (and run
# as ordinary tests in `make test`). Go 1.26's fuzz coordinator can fail a
# target with a bare "context deadline exceeded" at the end of FUZZTIME,
# having found nothing (golang/go#75804, fixed in Go 1.27): such a run,
# which wrote no failing input, is told apart from a finding, said so, and
# its corpus replayed; any other failure fails.
FUZZTIME ?= 30s
FUZZ_TARGETS := ./hsm/pkcs11uri:FuzzParseURI ./signer/config:FuzzParse ./signer/config:FuzzKeyIndex ./signer/audit:FuzzVerify ./signer/merkle:FuzzVerifyProof ./signer/dn:FuzzParse ./ocsp:FuzzVerify ./tsa:FuzzIssue ./tsa:FuzzVerifyResponse ./signer/xroad/keyconf:FuzzParse ./signer:FuzzParseCertInput ./signer:FuzzSignRequest
fuzz:
	@for t in $(FUZZ_TARGETS); do pkg=$${t%%:*}; fn=$${t##*:}; \
		echo "== $$fn in $$pkg for $(FUZZTIME)"; \
		out=$$(mktemp); \
		$(GO) test -run '^$$' -fuzz "^$$fn$$" -fuzztime $(FUZZTIME) $$pkg >$$out 2>&1; rc=$$?; cat $$out; \
		if [ $$rc -ne 0 ]; then \
			if grep -q 'Failing input written to' $$out || ! grep -qx '    context deadline exceeded' $$out; then rm -f $$out; exit 1; fi; \
			echo "== $$fn: the fuzz coordinator reported its own deadline and wrote no failing input (golang/go#75804); replaying the corpus"; \
			$(GO) test -count=1 -run "^$$fn$$" $$pkg || { rm -f $$out; exit 1; }; \
		fi; \
		rm -f $$out; \
	done

# deps installs $(DEB_PACKAGES) unless their commands are all on PATH: as is
# when CI is set or running as root, else through sudo.
deps:
	@missing=; \
	for c in $(DEB_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	for f in $(DEB_FILES); do [ -e "$$f" ] || missing="$$missing $$f"; done; \
	if [ -z "$$missing" ]; then echo "deps: $(DEB_PACKAGES) already installed"; exit 0; fi; \
	echo "deps: missing$$missing; installing $(DEB_PACKAGES)"; \
	if [ -n "$$CI" ] || [ "$$(id -u)" -eq 0 ]; then sudo=; \
	elif command -v sudo >/dev/null 2>&1; then sudo=sudo; \
	else echo "deps: need root or sudo to run: apt-get install -y $(DEB_PACKAGES)" >&2; exit 1; fi; \
	$$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y $(DEB_PACKAGES)
