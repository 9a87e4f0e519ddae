#!/usr/bin/env bash
# Soak: a mixed load (cache hits and misses, attacks, oversize programs, malformed requests, slow
# and stalled clients, health checks) from 32 concurrent clients against a compilerd on
# 127.0.0.1, once per backend, each for a bounded time. The driver (examples/soak.rs) asserts no
# 5xx but explicit 503 overload, well-formed answers, flat RSS after warm-up (10 %), no fd,
# container, cgroup or process left, and prints the daemon's CPU per request.
# Usage: scripts/soak.sh [DURATION per backend, default 10m] [CONCURRENCY, default 32]
# Env: SOAK_BACKENDS (default "bwrap docker"), SOAK_PROFILE (release|debug, default release),
#      COMPILERD_TEST_IMAGE, COMPILERD_TEST_ROOTFS.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=${1:-10m}
concurrency=${2:-32}
profile=${SOAK_PROFILE:-release}
image=${COMPILERD_TEST_IMAGE:-compilerd-test}
rootfs=${COMPILERD_TEST_ROOTFS:-/var/lib/compilerd-test/rootfs}

if [ "$profile" = release ]; then
  cargo build --quiet --release --bin compilerd
else
  cargo build --quiet --bin compilerd
fi
cargo build --quiet --example soak

status=0
for backend in ${SOAK_BACKENDS:-bwrap docker}; do
  target/debug/examples/soak --bin "target/$profile/compilerd" --backend "$backend" \
    --image "$image" --rootfs "$rootfs" --duration "$duration" --concurrency "$concurrency" \
    || status=1
done
exit $status
