#!/usr/bin/env bash
# The test command: readies this Debian 12 machine (scripts/setup-test-host.sh: packages, dockerd,
# sandbox images; as root, idempotent) and runs every test suite against the real backends.
# Arguments go to `cargo test`. The fast tier alone needs none of that (any user, no Docker):
#   cargo test --lib --test fast --test properties
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup-test-host.sh
cargo test "$@"
