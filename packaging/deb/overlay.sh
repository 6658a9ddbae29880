#!/usr/bin/env bash
# Run a command as root of a throwaway copy of this machine: / overlaid (changes go to
# a tmpfs), with /proc, /sys, /dev and a fresh /run, in a private mount namespace that
# vanishes with it. Lets `make deb-check` install, purge and reinstall packages on a
# machine that is not throwaway; the real / and its dpkg database are never touched.
#   packaging/deb/overlay.sh DIR CMD...   (DIR is copied to /cnibox-overlay in the copy)
set -euo pipefail
[ "${1:-}" = --inner ] || {
  dir=$(readlink -f "${1:?usage: overlay.sh DIR CMD...}")
  shift
  scratch=$(mktemp -d /tmp/cnibox-overlay.XXXXXX)
  trap 'rmdir "$scratch"' EXIT
  unshare --mount --propagation private -- "$0" --inner "$scratch" "$dir" "$@"
  exit
}
scratch=$2 dir=$3
shift 3
mount -t tmpfs tmpfs "$scratch"
mkdir -p "$scratch/upper" "$scratch/work" "$scratch/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$scratch/upper,workdir=$scratch/work" "$scratch/root"
r=$scratch/root
mount --rbind /proc "$r/proc"
mount --rbind /sys "$r/sys"
mount --rbind /dev "$r/dev"
mount -t tmpfs tmpfs "$r/run"
mkdir -p "$r/run/netns" "$r/cnibox-overlay"
cp -a "$dir/." "$r/cnibox-overlay/"
exec chroot "$r" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin CI=1 "$@"
