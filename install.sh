#!/usr/bin/env bash
# Install cnibox and one symlink per plugin into the CNI bin dir.
#   ./install.sh [--prefix DIR] [--cni-bin-dir DIR] [--binary PATH] [--force|--backup] [--uninstall]
#                [--with-dhcp-units]  (cni-dhcp.socket/.service into $SYSTEMD_UNIT_DIR, default /etc/systemd/system)
# Builds a release binary unless --binary is given. Idempotent. The binary is replaced
# atomically (temp file + rename), so a runtime exec'ing a plugin meanwhile never gets
# "text file busy" or a half-written file. Plugins already in the CNI bin dir (files, or
# links to other binaries) are kept unless --force replaces them or --backup replaces
# them keeping NAME.cnibox-orig, which --uninstall puts back.
set -euo pipefail
prefix=/usr/local
cni_bin_dir=/opt/cni/bin
binary=""
force=""
uninstall=""
dhcp_units=""
unit_dir=${SYSTEMD_UNIT_DIR:-/etc/systemd/system}
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix=$2; shift 2 ;;
    --cni-bin-dir) cni_bin_dir=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --force) force=--force; shift ;;
    --backup) force=--backup; shift ;;
    --uninstall) uninstall=1; shift ;;
    --with-dhcp-units) dhcp_units=1; shift ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
target="$prefix/bin/cnibox"

if [ -n "$uninstall" ]; then
  if [ -d "$cni_bin_dir" ]; then
    for l in "$cni_bin_dir"/*; do
      if [ -L "$l" ] && [ "$(readlink "$l")" = "$target" ]; then rm -f "$l"; echo "removed $l"; fi
    done
    for o in "$cni_bin_dir"/*.cnibox-orig; do
      [ -e "$o" ] || [ -L "$o" ] || continue
      n="${o%.cnibox-orig}"
      if [ ! -e "$n" ] && [ ! -L "$n" ]; then mv "$o" "$n"; echo "restored $n"; fi
    done
  fi
  if [ -e "$target" ]; then rm -f "$target"; echo "removed $target"; fi
  exit 0
fi

if [ -z "$binary" ]; then
  cd "$(dirname "$0")"
  cargo build --release
  binary=target/release/cnibox
fi
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable" >&2; exit 1; }

mkdir -p "$prefix/bin"
tmp=$(mktemp "$prefix/bin/.cnibox.XXXXXX")
trap 'rm -f "$tmp"' EXIT
cp "$binary" "$tmp"
chmod 755 "$tmp"
mv -f "$tmp" "$target"
trap - EXIT
echo "installed $target ($(stat -c %s "$target") bytes)"
"$target" --install "$cni_bin_dir" $force
echo "applets in $cni_bin_dir: $("$target" --list | tr '\n' ' ')"

if [ -n "$dhcp_units" ]; then
  src="$(cd "$(dirname "$0")" && pwd)/packaging"
  mkdir -p "$unit_dir"
  cp "$src/cni-dhcp.socket" "$unit_dir/cni-dhcp.socket"
  sed "s|@CNI_BIN_DIR@|$cni_bin_dir|g" "$src/cni-dhcp.service" > "$unit_dir/cni-dhcp.service"
  echo "installed $unit_dir/cni-dhcp.socket and cni-dhcp.service (systemctl enable --now cni-dhcp.socket)"
fi
