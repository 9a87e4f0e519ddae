#!/usr/bin/env bash
# Builds the sandbox image the tests and the quick start use, from Debian's busybox-static, with no
# image registry: a tiny rootfs whose default command is `sh`, so programs are shell scripts.
# Usage: scripts/build-test-image.sh [IMAGE] [ROOTFS_DIR]
# The rootfs directory is kept: the bubblewrap backend uses it as --rootfs.
set -euo pipefail
image=${1:-compilerd-test}
rootfs=${2:-/var/lib/compilerd-test/rootfs}
busybox=$(command -v busybox || echo /bin/busybox)
[ -x "$busybox" ] || { echo "busybox not found: apt-get install busybox-static" >&2; exit 1; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/root"/{bin,etc,tmp,proc,sys,dev,home}
chmod 1777 "$tmp/root/tmp"
cp "$busybox" "$tmp/root/bin/busybox"
for applet in $("$busybox" --list); do
  [ "$applet" = busybox ] || ln -sf busybox "$tmp/root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/sh\n' >"$tmp/root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$tmp/root/etc/group"

mkdir -p "$(dirname "$rootfs")"
rm -rf "$rootfs.new" && mv "$tmp/root" "$rootfs.new"
rm -rf "$rootfs" && mv "$rootfs.new" "$rootfs"
if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/bin' - "$image" >/dev/null
  echo "image $image built from $rootfs"
else
  echo "rootfs at $rootfs (no Docker engine: image not built)"
fi
