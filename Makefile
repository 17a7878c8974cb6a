# Makefile for hsmsigner. `make test` installs the Debian packages the tests
# need (see deps) and runs every test with the race detector.

GO ?= go

# Debian packages the tests need, and a command each one provides.
DEB_PACKAGES := softhsm2 opensc openssl protobuf-compiler
DEB_COMMANDS := softhsm2-util pkcs11-tool openssl protoc

.PHONY: all build vet test bench fuzz deps

all: build

build:
	$(GO) build ./...

vet:
	$(GO) vet ./...

test: deps
	$(GO) test -race -count=1 ./...

bench:
	$(GO) test -run '^$$' -bench . -benchtime 2000x ./hsm/

fuzz:
	@echo "fuzz: no fuzz targets yet"

# deps installs $(DEB_PACKAGES) unless their commands are all on PATH: as is
# when CI is set or running as root, else through sudo.
deps:
	@missing=; \
	for c in $(DEB_COMMANDS); do command -v $$c >/dev/null 2>&1 || missing="$$missing $$c"; done; \
	if [ -z "$$missing" ]; then echo "deps: $(DEB_PACKAGES) already installed"; exit 0; fi; \
	echo "deps: missing$$missing; installing $(DEB_PACKAGES)"; \
	if [ -n "$$CI" ] || [ "$$(id -u)" -eq 0 ]; then sudo=; \
	elif command -v sudo >/dev/null 2>&1; then sudo=sudo; \
	else echo "deps: need root or sudo to run: apt-get install -y $(DEB_PACKAGES)" >&2; exit 1; fi; \
	$$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y $(DEB_PACKAGES)
