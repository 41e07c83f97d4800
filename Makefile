# local-overlay: one entry point for setting up, building, testing and benchmarking.
# Every target works as root on a fresh Debian machine: `setup` installs what is missing.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

APT_PACKAGES := libfuse2 libfuse-dev fuse3 nix-bin fuse-overlayfs sqlite3 pkg-config patch openssl python3 util-linux e2fsprogs
NODE_BIN := node_modules/.bin

.PHONY: all setup system-packages deps native build install uninstall demo test bench bench-small bench-1m clean

all: build

setup: system-packages deps native build

# Installs only the Debian packages that are missing, so a set-up machine runs no apt at all.
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' "$$p" 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" != 0 ]; then echo "error: run as root to install:$$missing" >&2; exit 1; fi; \
	  apt-get update -qq; DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@# Nix's build users, as Debian's nix-setup-systemd makes them (apt may skip that recommended
	@# package): Nix as root builds as them by default, and the tests check the merged store does.
	@if ! getent group nixbld >/dev/null || [ -z "$$(getent group nixbld | cut -d: -f4)" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "error: run as root to add Nix's build users (group nixbld)" >&2; exit 1; fi; \
	  echo "adding Nix's build users nixbld1..nixbld10 (group nixbld)"; \
	  groupadd --force --system nixbld; \
	  for n in $$(seq 1 10); do id "nixbld$$n" >/dev/null 2>&1 || useradd --system --comment "Nix build user $$n" \
	    --home-dir /var/empty --gid nixbld --groups nixbld --no-user-group --shell /usr/sbin/nologin "nixbld$$n"; done; \
	fi

deps: node_modules/.package-lock.json

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

# fuse-native patched and built against the system libfuse 2; better-sqlite3 with URI support.
native: deps
	bash scripts/build-native.sh
	bash scripts/build-sqlite.sh

build: deps
	rm -rf dist
	$(NODE_BIN)/tsc -p tsconfig.json
	chmod 0755 dist/src/cli/main.js

# Puts `local-overlay` on PATH: a link in $(PREFIX)/bin to this checkout's built CLI (Node
# resolves its modules from the link's target), so a rebuild here is what runs there.
PREFIX ?= /usr/local

install: setup
	install -d $(PREFIX)/bin
	ln -sfn $(CURDIR)/dist/src/cli/main.js $(PREFIX)/bin/local-overlay
	@echo "local-overlay -> $(CURDIR)/dist/src/cli/main.js ($$($(PREFIX)/bin/local-overlay --version))"

uninstall:
	@if [ "$$(readlink $(PREFIX)/bin/local-overlay)" = "$(CURDIR)/dist/src/cli/main.js" ]; then rm $(PREFIX)/bin/local-overlay; echo "removed $(PREFIX)/bin/local-overlay"; \
	else echo "$(PREFIX)/bin/local-overlay is not this checkout's link: left alone"; fi

demo: setup
	bash scripts/demo.sh

# Typecheck and build (tsc, strict), then every test: unit, integration on real FUSE mounts,
# scenarios driven by the real Nix client. ava prints each test and the summary.
test: setup
	$(NODE_BIN)/eslint src test bench
	$(NODE_BIN)/ava
	node dist/test/tools/check-lower.js

# Benchmarks (bench/README.md): peers side by side, then GC cost vs lower file count and the
# cost of tracing. BENCH_ARGS is passed to the main runner (e.g. BENCH_ARGS='--reps 3').
BENCH_ARGS ?=

bench: setup
	node dist/bench/run.js --profile default $(BENCH_ARGS)
	node dist/bench/gc.js
	node dist/bench/trace.js --profile default
	node dist/bench/floor.js

bench-small: setup
	node dist/bench/run.js --profile small $(BENCH_ARGS)
	node dist/bench/gc.js --reps 3
	node dist/bench/trace.js --profile small --reps 3
	node dist/bench/floor.js

bench-1m: setup
	node dist/bench/run.js --profile 1m --only mirror-import $(BENCH_ARGS)

clean:
	rm -rf dist
