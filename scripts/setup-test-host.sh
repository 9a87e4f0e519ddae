#!/usr/bin/env bash
# Makes this Debian 12 machine ready for the full test suite, idempotently (run as root): the
# packages the tests use, a running Docker engine, socket buffers large enough for the output
# relay, and the sandbox images and root directories, all built from local Debian packages (no
# image registry). Each step does nothing when its work is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
[ "$(id -u)" = 0 ] || { echo "setup-test-host.sh: run as root (it installs packages and starts dockerd)" >&2; exit 1; }
say() { echo "--- $*"; }

say "packages"
# musl-tools builds the static output relay (gcc + libc6-dev are the fallback and build C crates);
# redis-server and haproxy are started by the tests
# on loopback ports of their own (never the system's services); openssl makes the TLS test's
# certificates; chromium drives the page in the browser tests; runsc (gVisor) is the Docker
# backend's second runtime, which CI tests too.
packages=(gcc libc6-dev musl-tools docker.io busybox-static bubblewrap prometheus debootstrap systemd curl rpm
  wrk jq redis-server haproxy openssl chromium fonts-dejavu-core runsc)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

say "docker engine"
if ! docker info >/dev/null 2>&1; then
  setsid dockerd >/var/log/dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { tail -50 /var/log/dockerd.log; echo "dockerd did not start" >&2; exit 1; }
fi
docker version --format 'engine {{.Server.Version}} (API {{.Server.APIVersion}})'

say "gVisor runtime (runsc) registered with the engine"
# As "runsc" in daemon.json, merged into what is there. --network=none: runsc otherwise refuses to
# start a container in the root network namespace, and the sandboxes have no network anyway;
# ptrace: the platform that works without KVM (a VM here). SIGHUP makes dockerd reload its
# runtimes without stopping the containers of other users of this engine.
daemon_json=/etc/docker/daemon.json
runsc_path=$(command -v runsc)
wanted=$(jq -n --arg path "$runsc_path" '{path: $path, runtimeArgs: ["--platform=ptrace", "--network=none"]}')
current='{}'
[ -s "$daemon_json" ] && current=$(cat "$daemon_json")
if [ "$(jq -c '.runtimes.runsc' <<<"$current")" != "$(jq -c . <<<"$wanted")" ]; then
  mkdir -p "$(dirname "$daemon_json")"
  jq --argjson r "$wanted" '.runtimes.runsc = $r' <<<"$current" >"$daemon_json.new"
  mv "$daemon_json.new" "$daemon_json"
fi
registered() { docker info --format '{{json .Runtimes}}' | jq -e --argjson r "$wanted" '.runsc.runtimeArgs == $r.runtimeArgs' >/dev/null; }
if ! registered; then
  kill -HUP "$(cat /var/run/docker.pid)"
  for _ in $(seq 30); do registered && break; sleep 1; done
  registered || { echo "dockerd did not pick up the runsc runtime from $daemon_json" >&2; exit 1; }
fi
docker info --format 'runtimes: {{range $name, $_ := .Runtimes}}{{$name}} {{end}}'

say "socket buffers"
# The output relay's sockets carry each write whole: the largest single write a program can make is
# about twice net.core.wmem_max (Debian's default allows ~416 KB; the tests write 3 MB at once).
if [ "$(cat /proc/sys/net/core/wmem_max)" -lt 4194304 ]; then sysctl -q -w net.core.wmem_max=4194304; fi

say "test image"
scripts/build-test-image.sh compilerd-test /var/lib/compilerd-test/rootfs

say "language images (Go, Python, C from Debian packages)"
# apt-cache must know the toolchains' packages; a fresh machine may not have fetched the lists.
apt-cache show golang-1.19-go >/dev/null 2>&1 || apt-get update -qq
for lang in go python c; do scripts/build-image.sh "$lang"; done

say "Piston clients (piston-client from npm, aiopyston from PyPI)"
# tests/piston.rs runs the published clients: piston-client under Debian's nodejs, aiopyston in a
# venv of its own.
# (A nodejs of another origin may bring its own npm, which Debian's npm package conflicts with.)
command -v node >/dev/null && command -v npm >/dev/null ||
  { apt-get update -qq; apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null; }
python3 -c 'import venv, ensurepip' 2>/dev/null ||
  apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
clients=/var/lib/compilerd-test/clients
[ -f "$clients/node_modules/piston-client/package.json" ] ||
  npm install --prefix "$clients" --no-audit --no-fund --silent piston-client@1.0.2
[ -x "$clients/venv/bin/python" ] || python3 -m venv "$clients/venv"
"$clients/venv/bin/python" -c 'import pyston' 2>/dev/null ||
  "$clients/venv/bin/pip" install -q aiopyston==1.2.1

say "Judge0 clients (judge0 and judge0-client from PyPI)"
# tests/judge0*.rs run the official SDK and the async judge0-client in the same venv.
"$clients/venv/bin/python" -c 'import judge0, judge0_client' 2>/dev/null ||
  "$clients/venv/bin/pip" install -q judge0==0.0.8 judge0-client==0.4.0
