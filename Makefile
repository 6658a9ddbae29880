# cnibox: build, test, install, benchmark.
#   make build    release binary (target/release/cnibox)
#   make check    everything CI runs: prerequisites, oracle, lint, tests (the README's test command)
#   make test     unit + integration tests (root), then the VLAN tests in the vmtest VM
#   make lint     cargo fmt --check + clippy -D warnings
#   make install  ./install.sh (PREFIX, CNI_BIN_DIR)
#   make bench    cnibox vs the Go reference plugins, side by side
#   make fuzz     run every cargo-fuzz target for FUZZ_TIME seconds (nightly; own netns)
#   make static   fully static binary (glibc, static-pie): target/static/cnibox
#   make man      the man page from the binary's own help table: target/man/cnibox.1
#   make deb      Debian package (dpkg-deb): target/deb/cnibox_VERSION_amd64.deb
#   make deb-check  install the .deb over Debian's plugins, ADD/DEL, purge, reinstall
#                 Debian's: on the machine itself when CI is set (throwaway machines),
#                 elsewhere inside an overlay copy of / (packaging/deb/overlay.sh)
SHELL := /bin/bash
CARGO ?= cargo
LOCKED := $(if $(CI),--locked,)
PREFIX ?= /usr/local
CNI_BIN_DIR ?= /opt/cni/bin
VMTEST ?= $(abspath ../shared/vmtest/run-in-vm)
ORACLE_DIR := target/oracle
APT_PKGS := iproute2 nftables iptables containernetworking-plugins iputils-ping jq xz-utils socat conntrack dnsmasq-base containerd runc podman conmon busybox-static

.PHONY: build check test test-host test-vm lint install deps oracle bench fuzz clean static man deb deb-check

build:
	$(CARGO) build --release $(LOCKED)

check: deps oracle lint test

# Host tests first; the bridge VLAN tests need a kernel with bridge VLAN filtering,
# which this machine's kernel lacks, so they are deferred on the host (they say so)
# and run for real in the VM right after.
test: test-host test-vm

test-host:
	CNIBOX_VLAN_TESTS_IN_VM=1 CNIBOX_DUMMY_TESTS_IN_VM=1 CNIBOX_VRF_TESTS_IN_VM=1 CNIBOX_IPVLAN_TESTS_IN_VM=1 $(CARGO) test $(LOCKED)

test-vm:
	@test -x $(VMTEST) || { echo "test-vm: $(VMTEST) not found (needs ../shared)"; exit 1; }
	CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER=$(VMTEST) $(CARGO) test $(LOCKED) --test bridge_vlan --test dummy --test vrf --test ipvlan --test vlan -- --include-ignored --test-threads=1

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy $(LOCKED) --all-targets -- -D warnings

install:
	./install.sh --prefix $(PREFIX) --cni-bin-dir $(CNI_BIN_DIR)

# Test prerequisites from Debian (skipped when all are present).
deps:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

oracle:
	../shared/oracle/unpack $(ORACLE_DIR)

bench: build static oracle
	$(CARGO) build --release --example inproc
	STATIC=target/static/cnibox bench/run.sh

# glibc's crt-static with the target named explicitly, so that build scripts and proc
# macros stay dynamic host code and only the binary is static (static-pie on x86_64).
STATIC_TARGET := x86_64-unknown-linux-gnu
static:
	RUSTFLAGS="-C target-feature=+crt-static" $(CARGO) build --release $(LOCKED) --target $(STATIC_TARGET)
	mkdir -p target/static
	cp target/$(STATIC_TARGET)/release/cnibox target/static/cnibox.tmp
	mv -f target/static/cnibox.tmp target/static/cnibox

man: build
	mkdir -p target/man
	target/release/cnibox --man > target/man/cnibox.1

deb: build
	packaging/deb/build.sh target/release/cnibox target/deb

# On CI (throwaway machine) for real; elsewhere in an overlay copy of / that vanishes.
deb-check: deb
	if [ -n "$(CI)" ]; then packaging/deb/check.sh target/deb; else \
		cp packaging/deb/check.sh target/deb/ && \
		packaging/deb/overlay.sh target/deb bash /cnibox-overlay/check.sh /cnibox-overlay; fi

# The fuzzers run in a network namespace of their own: the harness target runs real
# applets (with a netns path that does not exist, so they stop at validation), and this
# makes sure nothing they might try can reach the machine's network.
FUZZ_TIME ?= 300
FUZZ_TARGETS := harness cni_args results netlink store gob
fuzz:
	cd fuzz && $(CARGO) +nightly fuzz build
	for t in $(FUZZ_TARGETS); do \
		unshare --net -- sh -c "cd fuzz && $(CARGO) +nightly fuzz run $$t -- -max_total_time=$(FUZZ_TIME) -print_final_stats=1" || exit 1; \
	done

clean:
	$(CARGO) clean
