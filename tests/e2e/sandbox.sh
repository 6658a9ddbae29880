#!/bin/sh
# Run a command in a private mount namespace in which the paths a container runtime
# hard-codes are the test's temp dirs:
#   /etc/cni/net.d -> DIR/net.d   /opt/cni/bin -> DIR/bin   /var/lib/cni -> DIR/cni
#   /run           -> a fresh tmpfs (containerd's shim sockets, runc's state, podman's
#                     netns files and locks live and die with the namespace)
#   /usr/lib/cni and the other usual plugin dirs -> empty
#   /sys           -> a sysfs of the current network namespace, the machine's cgroup
#                     hierarchies kept below it
# The caller enters the test's host network namespace first (nsenter --net, not
# `ip netns exec`, which would drop the cgroup mounts runc needs), then starts this as
# the first process of new mount and PID namespaces (`unshare --mount --pid --fork
# --kill-child --mount-proc --propagation private`), so that everything it starts, and
# every mount below, is gone once that process dies.
#   sandbox.sh DIR CMD...
set -eu
dir=$1
shift

# Make PATH appear as a mount of SRC. A path that does not exist on the machine is made
# inside an overlay of its nearest existing ancestor, so the machine's file system never
# gains the directory.
shadow() {
    p=$1 src=$2
    a=$p
    while [ ! -e "$a" ]; do a=$(dirname "$a"); done
    if [ "$a" != "$p" ]; then
        [ "$a" != / ] || { echo "sandbox: will not overlay / for $p" >&2; exit 1; }
        o=$dir/overlay$(echo "$a" | tr / _)
        mkdir -p "$o/upper" "$o/work"
        mount -t overlay overlay -o "lowerdir=$a,upperdir=$o/upper,workdir=$o/work" "$a"
        mkdir -p "$p"
    fi
    mount --bind "$src" "$p"
}

# A sysfs of this network namespace (the one inherited shows the machine's links), with
# the machine's cgroup hierarchies kept below it for runc.
mkdir -p "$dir/sysfs"
mount -t sysfs sysfs "$dir/sysfs"
mount --rbind /sys/fs/cgroup "$dir/sysfs/fs/cgroup"
mount --rbind "$dir/sysfs" /sys
mount -t tmpfs -o mode=755 tmpfs /run
shadow /etc/cni/net.d "$dir/net.d"
shadow /opt/cni/bin "$dir/bin"
shadow /var/lib/cni "$dir/cni"
# The machine's own plugin dirs (Debian's Go plugins live in /usr/lib/cni) are emptied,
# so a runtime that ignored the test's plugin dir would find no plugin at all instead of
# passing with somebody else's.
for d in /usr/lib/cni /usr/libexec/cni /usr/local/lib/cni /usr/local/libexec/cni; do
    if [ -d "$d" ]; then mount -t tmpfs -o ro,mode=755 tmpfs "$d"; fi
done
: >"$dir/sandbox.ready"
exec "$@"
