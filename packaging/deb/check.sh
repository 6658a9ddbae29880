#!/usr/bin/env bash
# make deb-check: the package's life on a real machine, as an admin would live it.
#   packaging/deb/check.sh DEBDIR
# Installs the .deb over Debian's containernetworking-plugins (apt removes it: Conflicts
# + Replaces), runs a bridge + host-local ADD/DEL through /usr/lib/cni/bridge in
# throwaway namespaces, purges the package, checks that nothing of it is left, and
# reinstalls Debian's plugins (and whatever needed them). CNIBOX_DEB_CHECK_E2E=CMD runs
# CMD against /usr/lib/cni while the package is installed. This CHANGES THE MACHINE (/usr/lib/cni, the dpkg
# database): it refuses to run unless CI is set or CNIBOX_DEB_CHECK=yes.
set -euo pipefail
debdir=${1:?usage: check.sh DEBDIR}
if [ -z "${CI:-}" ] && [ "${CNIBOX_DEB_CHECK:-}" != yes ]; then
  echo "deb-check: replaces this machine's CNI plugins; run on a throwaway machine with CI=1 or CNIBOX_DEB_CHECK=yes" >&2
  exit 2
fi
deb=$(ls -1 "$debdir"/cnibox_*.deb | sort -V | tail -1)
deb=$(readlink -f "$deb")
export DEBIAN_FRONTEND=noninteractive
apt_q() { apt-get -y -q -o Dpkg::Use-Pty=0 "$@" >/dev/null; }
fail() { echo "deb-check: FAIL: $*" >&2; exit 1; }
step() { echo "== deb-check: $*"; }

hostns=cbxdeb-h-$$ contns=cbxdeb-c-$$ work=$(mktemp -d)
cleanup() {
  ip netns del "$contns" 2>/dev/null || true
  ip netns del "$hostns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

step "Debian's containernetworking-plugins installed first"
dpkg -s containernetworking-plugins >/dev/null 2>&1 || apt_q install --no-install-recommends containernetworking-plugins
[ -f /usr/lib/cni/bridge ] && [ ! -L /usr/lib/cni/bridge ] || fail "Debian's /usr/lib/cni/bridge is not there"

installed() { dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" {print $2}' | sort; }
before=$(installed)

step "install $deb (replaces Debian's package)"
apt_q install --no-install-recommends "$deb"
after=$(installed)
# Only Debian's plugins go (what depends on them, containerd say, stays: Provides).
[ "$(comm -23 <(echo "$before") <(echo "$after"))" = containernetworking-plugins ] ||
  fail "removed: $(comm -23 <(echo "$before") <(echo "$after") | tr '\n' ' ')"
[ "$(comm -13 <(echo "$before") <(echo "$after"))" = cnibox ] ||
  fail "added: $(comm -13 <(echo "$before") <(echo "$after") | tr '\n' ' ')"
dpkg -s containernetworking-plugins 2>/dev/null | grep -q '^Status: install ok installed' &&
  fail "containernetworking-plugins is still installed"
[ "$(dpkg-query -W -f '${Status}' cnibox)" = "install ok installed" ] || fail "cnibox not installed"
for a in $(/usr/bin/cnibox --list); do
  [ "$(readlink -f /usr/lib/cni/$a)" = /usr/bin/cnibox ] || fail "/usr/lib/cni/$a is not ours"
  [ -L /opt/cni/bin/$a ] || [ -e /opt/cni/bin/$a ] || fail "/opt/cni/bin/$a missing"
done
[ -f /usr/share/man/man1/cnibox.1.gz ] || fail "man page missing"
zcat /usr/share/man/man1/cnibox.1.gz | head -1 | grep -q '^\.TH CNIBOX 1' || fail "man page is not roff"

step "ADD/DEL through /usr/lib/cni/bridge in throwaway namespaces"
ip netns add "$hostns"
ip netns add "$contns"
conf='{"cniVersion":"1.0.0","name":"debcheck","type":"bridge","bridge":"cbxdeb0","isGateway":true,"ipam":{"type":"host-local","subnet":"10.93.0.0/24","dataDir":"'"$work"'/ipam"}}'
call() {
  CNI_COMMAND=$1 CNI_CONTAINERID=debcheck CNI_NETNS=/run/netns/$contns CNI_IFNAME=eth0 \
    CNI_PATH=/usr/lib/cni ip netns exec "$hostns" /usr/lib/cni/bridge <<<"$conf"
}
out=$(call ADD) || fail "ADD: $out"
grep -q '"10.93.0.2/24"' <<<"$out" || fail "ADD result: $out"
ip -n "$contns" -br addr show dev eth0 | grep -q '10.93.0.2/24' || fail "no address in the container"
[ -f "$work/ipam/debcheck/10.93.0.2" ] || fail "no host-local reservation"
out=$(call DEL) || fail "DEL: $out"
ip -n "$contns" link show dev eth0 >/dev/null 2>&1 && fail "eth0 left after DEL"
[ -f "$work/ipam/debcheck/10.93.0.2" ] && fail "reservation left after DEL"

# Hook for an end-to-end run against the installed plugins (the containerd e2e, say):
# a command run with CNI_BIN_DIR=/usr/lib/cni while the package is installed.
if [ -n "${CNIBOX_DEB_CHECK_E2E:-}" ]; then
  step "e2e against /usr/lib/cni: $CNIBOX_DEB_CHECK_E2E"
  CNI_BIN_DIR=/usr/lib/cni bash -c "$CNIBOX_DEB_CHECK_E2E" || fail "e2e: $CNIBOX_DEB_CHECK_E2E"
fi

step "purge: nothing of the package left"
apt_q purge cnibox
# What needed a container network stack (podman, ...) goes with it; put back below.
gone=$(comm -23 <(echo "$after") <(installed) | grep -vx cnibox || true)
dpkg-query -W -f '${Status}' cnibox 2>/dev/null | grep -q installed && fail "cnibox still installed"
[ -e /usr/bin/cnibox ] && fail "/usr/bin/cnibox left"
[ -e /usr/share/man/man1/cnibox.1.gz ] && fail "man page left"
for l in /usr/lib/cni/* /opt/cni/bin/*; do
  [ -L "$l" ] && [ "$(readlink "$l")" = /usr/bin/cnibox ] && fail "$l left"
  [ -L "$l" ] && [ "$(readlink "$l")" = ../../bin/cnibox ] && fail "$l left"
done

step "Debian's containernetworking-plugins installs again (with: $(echo $gone))"
# shellcheck disable=SC2086
apt_q install --no-install-recommends containernetworking-plugins $gone
[ "$(installed)" = "$before" ] || fail "packages differ from before: $(diff <(echo "$before") <(installed) | tr '\n' ' ')"
[ -f /usr/lib/cni/bridge ] && [ ! -L /usr/lib/cni/bridge ] || fail "Debian's bridge not back"
CNI_COMMAND=VERSION /usr/lib/cni/bridge </dev/null | grep -q supportedVersions || fail "Debian's bridge does not run"
step "ok"
