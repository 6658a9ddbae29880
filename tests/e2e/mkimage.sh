#!/bin/sh
# Build a minimal OCI image archive (an OCI image layout, tarred) from Debian's
# busybox-static, with no registry: one uncompressed layer holding /bin/busybox and a
# link per applet, a config and a manifest written here, addressed by their sha256.
#   mkimage.sh OUT.tar IMAGE-NAME
# `ctr images import` and `podman load` both read the result; the name is carried by the
# index annotations (org.opencontainers.image.ref.name for podman, io.containerd.image.name
# for containerd).
set -eu
out=$1
name=$2
bb=/bin/busybox
[ -x "$bb" ] || { echo "mkimage: $bb missing (apt-get install busybox-static)" >&2; exit 1; }
"$bb" --list | grep -qx ping || { echo "mkimage: $bb has no ping applet" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/bin" "$root/etc" "$root/proc" "$root/sys" "$root/dev" "$root/tmp" "$root/www" "$root/root"
cp "$bb" "$root/bin/busybox"
for a in $("$bb" --list); do
    [ "$a" = busybox ] || ln -s busybox "$root/bin/$a"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"

arch=$(dpkg --print-architecture)
blobs=$work/oci/blobs/sha256
mkdir -p "$blobs"
# A reproducible layer: fixed order, owner and mtime.
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$work/layer.tar" .
layer=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
layer_size=$(stat -c %s "$work/layer.tar")
mv "$work/layer.tar" "$blobs/$layer"

blob() { # store stdin as a blob; print "digest size"
    cat >"$work/blob"
    d=$(sha256sum "$work/blob" | cut -d' ' -f1)
    s=$(stat -c %s "$work/blob")
    mv "$work/blob" "$blobs/$d"
    echo "$d $s"
}

set -- $(printf '{"architecture":"%s","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["/bin/sh"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"cnibox tests/e2e/mkimage.sh"}]}' \
    "$arch" "$layer" | blob)
config=$1 config_size=$2
set -- $(printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$config" "$config_size" "$layer" "$layer_size" | blob)
manifest=$1 manifest_size=$2

printf '{"imageLayoutVersion":"1.0.0"}' >"$work/oci/oci-layout"
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"platform":{"architecture":"%s","os":"linux"},"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest" "$manifest_size" "$arch" "$name" "$name" >"$work/oci/index.json"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$work/oci" -cf "$out" .
