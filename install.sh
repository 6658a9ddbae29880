#!/usr/bin/env bash
# Install cnibox, its man page and one symlink per plugin into the CNI bin dir.
#   ./install.sh [--install] [--prefix DIR] [--cni-bin-dir DIR] [--binary PATH] [--force|--backup]
#                [--with-dhcp-units]  (cni-dhcp.socket/.service into $SYSTEMD_UNIT_DIR, default /etc/systemd/system)
#   ./install.sh --uninstall [--prefix DIR] [--cni-bin-dir DIR]
# Builds a release binary unless --binary is given. Idempotent. The binary is replaced
# atomically (temp file + rename), so a runtime exec'ing a plugin meanwhile never gets
# "text file busy" or a half-written file. Plugins already in the CNI bin dir (files, or
# links to other binaries) are kept unless --force replaces them or --backup replaces
# them keeping NAME.cnibox-orig; --backup also keeps a different PREFIX/bin/cnibox or
# man page it replaces as FILE.cnibox-orig (the first one: later installs keep it).
# --uninstall removes what was installed and puts every .cnibox-orig back.
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
    --install) uninstall=""; shift ;;
    --uninstall) uninstall=1; shift ;;
    --with-dhcp-units) dhcp_units=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
# Absolute, so that the build below (which changes directory) cannot move them.
case $prefix in /*) ;; *) prefix=$PWD/$prefix ;; esac
case $cni_bin_dir in /*) ;; *) cni_bin_dir=$PWD/$cni_bin_dir ;; esac
case $unit_dir in /*) ;; *) unit_dir=$PWD/$unit_dir ;; esac
here=$(cd "$(dirname "$0")" && pwd)
target="$prefix/bin/cnibox"
man="$prefix/share/man/man1/cnibox.1"

# restore FILE: put FILE.cnibox-orig back in FILE's place (after ours is removed).
restore() {
  if [ -e "$1.cnibox-orig" ] || [ -L "$1.cnibox-orig" ]; then mv -f "$1.cnibox-orig" "$1"; echo "restored $1"; fi
}

# put NEW FILE: move NEW into FILE's place atomically; with --backup, first keep a FILE
# that differs from NEW as FILE.cnibox-orig (a copy: FILE never disappears meanwhile).
put() {
  local new=$1 file=$2
  if [ "$force" = --backup ] && { [ -e "$file" ] || [ -L "$file" ]; } && ! cmp -s "$file" "$new" &&
    ! { [ -e "$file.cnibox-orig" ] || [ -L "$file.cnibox-orig" ]; }; then
    cp -a "$file" "$file.cnibox-orig"
    echo "$file saved as $file.cnibox-orig"
  fi
  mv -f "$new" "$file"
}

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
  restore "$target"
  if [ -e "$man" ]; then rm -f "$man"; echo "removed $man"; fi
  restore "$man"
  exit 0
fi

if [ -z "$binary" ]; then
  cd "$here"
  cargo build --release
  binary=target/release/cnibox
fi
[ -x "$binary" ] || { echo "install.sh: $binary is not an executable" >&2; exit 1; }

mkdir -p "$prefix/bin"
tmp=$(mktemp "$prefix/bin/.cnibox.XXXXXX")
trap 'rm -f "$tmp"' EXIT
cp "$binary" "$tmp"
chmod 755 "$tmp"
put "$tmp" "$target"
trap - EXIT
echo "installed $target ($(stat -c %s "$target") bytes)"
mkdir -p "$(dirname "$man")"
tmp=$(mktemp "$(dirname "$man")/.cnibox.1.XXXXXX")
trap 'rm -f "$tmp"' EXIT
"$target" --man >"$tmp"
chmod 644 "$tmp"
put "$tmp" "$man"
trap - EXIT
echo "installed $man"
"$target" --install "$cni_bin_dir" $force
echo "applets in $cni_bin_dir: $("$target" --list | tr '\n' ' ')"

if [ -n "$dhcp_units" ]; then
  src="$here/packaging"
  mkdir -p "$unit_dir"
  cp "$src/cni-dhcp.socket" "$unit_dir/cni-dhcp.socket"
  sed "s|@CNI_BIN_DIR@|$cni_bin_dir|g" "$src/cni-dhcp.service" > "$unit_dir/cni-dhcp.service"
  echo "installed $unit_dir/cni-dhcp.socket and cni-dhcp.service (systemctl enable --now cni-dhcp.socket)"
fi
