#!/usr/bin/env bash
# End-to-end proof of the packages under a real systemd.
#
# Builds the .deb (cargo deb) and the .rpm (cargo generate-rpm), boots a Debian 12 root with
# systemd as PID 1 in a container of the host's Docker engine (the engine's socket is bind-mounted
# in, so the daemon inside runs its sandboxes on the host's engine), and checks in it:
#   install -> socket listening, service not running; a POST /compile starts it and is answered;
#   status line, structured journal entries, the unit's sandbox reaching docker.sock;
#   `systemctl stop` drains and exits cleanly without a poweroff; an upgrade restarts the daemon;
#   remove and purge leave no unit, config or process; the .rpm's files and scriptlets (the
#   scriptlets are also run under the same systemd); an administrator's stop during a self-halt
#   drain does not power off; finally a self-halt (exit status 3) powers the container off.
#
# Prints PASS/FAIL per check and exits non-zero on any failure. Needs root, docker, debootstrap,
# rpm; installs cargo-deb and cargo-generate-rpm when missing. The Debian root is built once and
# kept (/var/cache/compilerd-ci/ and the image compilerd-ci-bookworm); the Debian mirror is the
# one this machine's apt uses.
#
# Environment: PKGTEST_PROFILE=release packages the shipped build (default: the quicker
# package-test profile); KEEP=1 leaves the container running for a look inside; PKGTEST_CONTAINER names it
# (default compilerd-pkgtest).
set -uo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)

ctr=${PKGTEST_CONTAINER:-compilerd-pkgtest}
cache=/var/cache/compilerd-ci
# Bump the tag when the recipe of the root changes.
base_image=compilerd-ci-bookworm:1
test_image=compilerd-test
program='echo hello-from-compilerd'
expected_output=hello-from-compilerd
# Short enough to keep the test fast, long enough to be measured.
drain=2

failures=0
pass() { echo "PASS: $*"; }
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}
info() { echo "INFO: $*"; }
die() {
    echo "FAIL: $*"
    echo "package-test: aborted after $(($(date +%s) - started))s"
    exit 1
}
# check NAME COMMAND...: PASS when COMMAND succeeds.
check() {
    local name=$1
    shift
    if "$@"; then pass "$name"; else fail "$name"; fi
}
# Run in the container.
cx() { docker exec "$ctr" "$@"; }
cxsh() { docker exec "$ctr" sh -c "$1"; }
# wait_for SECONDS COMMAND...: poll until COMMAND succeeds.
wait_for() {
    local deadline=$(($(date +%s) + $1))
    shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}
prop() { cx systemctl show -P "$2" "$1" 2>/dev/null; }
running() { [ "$(docker inspect -f '{{.State.Running}}' "$ctr" 2>/dev/null)" = true ]; }
compilerd_procs() { cxsh 'for f in /proc/[0-9]*/comm; do [ "$(cat "$f" 2>/dev/null)" = compilerd ] && echo "${f%/comm}"; done; true'; }

tmp=$(mktemp -d)
cleanup() {
    if [ "${KEEP:-}" = 1 ]; then
        echo "KEEP=1: container $ctr left running"
    else
        docker rm -f "$ctr" >/dev/null 2>&1
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# --- prerequisites ---------------------------------------------------------------------------
for tool in docker debootstrap rpm jq; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install docker.io debootstrap rpm jq)"
done
docker info >/dev/null 2>&1 || die "the Docker engine does not answer"
[ -f README.md ] || die "README.md is missing: the packages ship it as documentation"
for tool in cargo-deb cargo-generate-rpm; do
    if ! command -v "$tool" >/dev/null; then
        echo "installing $tool (once per machine)"
        cargo install --locked --quiet "$tool" || die "cargo install $tool"
    fi
done
if ! docker image inspect "$test_image" >/dev/null 2>&1; then
    scripts/build-test-image.sh "$test_image" >/dev/null || die "cannot build the test image $test_image"
fi

# --- the packages ----------------------------------------------------------------------------
rm -f target/debian/compilerd_*.deb target/generate-rpm/compilerd-*.rpm
t=$(date +%s)
# PKGTEST_PROFILE=release tests the shipped build; the default is the quick profile of
# Cargo.toml, the same files and scriptlets around an unoptimised binary.
profile=${PKGTEST_PROFILE:-package-test}
cargo deb --profile "$profile" --quiet >/dev/null || die "cargo deb"
cargo generate-rpm --profile "$profile" >/dev/null || die "cargo generate-rpm"
deb=$(ls target/debian/compilerd_*.deb 2>/dev/null | head -1)
rpm=$(ls target/generate-rpm/compilerd-*.rpm 2>/dev/null | head -1)
[ -f "$deb" ] && [ -f "$rpm" ] || die "no package built"
pass "packages built in $(($(date +%s) - t))s: $deb, $rpm"

# --- the Debian 12 root with systemd ---------------------------------------------------------
# The first Debian archive URL of this machine's apt sources (one-line or deb822 format).
debian_mirror() {
    {
        grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{ for (i = 2; i <= NF; i++) print $i }'
        grep -hs '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
            awk '{ for (i = 2; i <= NF; i++) if ($i !~ /^\[/) { print $i; break } }'
    } | grep -E '/debian/?$' | head -1
}
if ! docker image inspect "$base_image" >/dev/null 2>&1; then
    tarball=$cache/bookworm-systemd-${base_image##*:}.tar
    if [ ! -f "$tarball" ]; then
        mirror=$(debian_mirror)
        [ -n "$mirror" ] || die "no Debian mirror in /etc/apt/sources.list*"
        echo "building the Debian 12 root (debootstrap, once per machine)"
        mkdir -p "$cache"
        rm -rf "$cache/rootfs.new"
        debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,curl bookworm \
            "$cache/rootfs.new" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
            die "debootstrap failed, see $cache/debootstrap.log"
        rm -f "$cache"/rootfs.new/var/cache/apt/archives/*.deb
        tar -C "$cache/rootfs.new" -cf "$tarball.new" . && mv "$tarball.new" "$tarball" ||
            die "cannot write $tarball"
        rm -rf "$cache/rootfs.new"
    fi
    docker import "$tarball" "$base_image" >/dev/null || die "docker import $tarball"
fi

docker rm -f "$ctr" >/dev/null 2>&1
# No network: nothing in there needs one (the package's dependencies are already in the root),
# and an engine without a bridge network runs it too. The daemon's runtime directory is the
# host's: the engine (the host's) bind-mounts the output relay from the path the daemon wrote it
# to, as it would on a machine where both run side by side.
mkdir -p /run/compilerd
docker run -d --name "$ctr" --hostname "$ctr" --network none \
    --cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined \
    --cgroupns=host -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock \
    -v /run/compilerd:/run/compilerd \
    -v /var/run/docker.sock:/var/run/docker.sock "$base_image" /sbin/init >/dev/null ||
    die "cannot start the systemd container"
state=
for _ in $(seq 180); do
    state=$(docker exec "$ctr" systemctl is-system-running 2>/dev/null)
    case $state in running | degraded) break ;; esac
    sleep 0.5
done
case $state in
running | degraded) pass "systemd booted in the container ($state)" ;;
*) die "systemd did not boot in the container: '$state'" ;;
esac
# A persistent journal, so that it can be read after the container powered itself off.
cxsh 'mkdir -p /var/log/journal && journalctl --flush' >/dev/null 2>&1
# The engine's socket belongs to the host's docker group: give the container's docker group the
# same id (the package's sysusers entry keeps an existing docker group as it is).
sock_gid=$(stat -c %g /var/run/docker.sock)
cx groupadd -o -g "$sock_gid" docker >/dev/null 2>&1 || true
docker cp "$deb" "$ctr:/tmp/compilerd.deb" >/dev/null

# --- install ---------------------------------------------------------------------------------
# No network in there: the dependencies must already be satisfied, as on any Debian 12 with systemd.
out=$(cx env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends /tmp/compilerd.deb 2>&1)
if [ $? -eq 0 ]; then pass "apt-get install ./compilerd.deb"; else
    fail "apt-get install ./compilerd.deb"
    printf '%s\n' "$out" | tail -20 | sed 's/^/    /'
    die "cannot go on without the package"
fi
files_ok=yes
for f in /usr/bin/compilerd /usr/lib/systemd/system/compilerd.service \
    /usr/lib/systemd/system/compilerd.socket /usr/lib/compilerd/halt-if-requested /usr/lib/compilerd/build-image \
    /etc/compilerd/config.toml /usr/lib/sysusers.d/compilerd.conf \
    /usr/share/doc/compilerd/README.md /usr/share/doc/compilerd/LICENSE \
    /usr/share/doc/compilerd/copyright /usr/share/doc/compilerd/fleet-drill.sh \
    /usr/share/compilerd/haproxy/compilerd.cfg /usr/share/compilerd/prometheus/compilerd-alerts.yml \
    /usr/share/compilerd/prometheus/compilerd-alerts.test.yml \
    /usr/share/compilerd/grafana/compilerd-dashboard.json /usr/share/compilerd/systemd/shared-cache.conf; do
    cx test -e "$f" || {
        files_ok=no
        echo "    missing: $f"
    }
done
check "the .deb installed the binary, units, halt helper, config, sysusers entry, docs and fleet files" [ $files_ok = yes ]
check "/etc/compilerd/config.toml is a conffile" cxsh 'dpkg-query -W -f="\${Conffiles}" compilerd | grep -q /etc/compilerd/config.toml'
check "the shipped config passes check-config" eval 'cx compilerd check-config --config /etc/compilerd/config.toml >/dev/null'
check "user compilerd exists and is in the docker group" cxsh 'id -nG compilerd | tr " " "\n" | grep -qx docker'
check "compilerd.socket is enabled" [ "$(cx systemctl is-enabled compilerd.socket 2>/dev/null)" = enabled ]
check "compilerd.socket is active (listening)" [ "$(prop compilerd.socket ActiveState)" = active ]
check "compilerd.service is not running yet" [ "$(prop compilerd.service ActiveState)" = inactive ]
check "nothing listens but systemd (no compilerd process)" [ -z "$(compilerd_procs)" ]

# The installed unit, scored by the systemd that runs it.
score=$(cx systemd-analyze security compilerd.service 2>/dev/null | sed -n 's/.*Overall exposure level for compilerd.service: \([0-9.]*\).*/\1/p')
check "systemd-analyze security compilerd.service in the container: ${score:-?} <= 2.0" \
    awk -v s="${score:-99}" 'BEGIN { exit !(s <= 2.0) }'

# The unit's sandbox reaches the engine: the same [Service] hardening (user, PrivateUsers,
# PrivateNetwork, RestrictAddressFamilies=AF_UNIX, IPAddressDeny, seccomp, ...) around a
# GET /_ping on /var/run/docker.sock, so this holds whatever the daemon's backend does.
cxsh 'sed -e "s/^Type=notify/Type=oneshot/" \
    -e "s|^ExecStart=.*|ExecStart=/usr/bin/curl -fsS --max-time 10 --unix-socket /var/run/docker.sock http://engine/_ping|" \
    -e "/^ExecStopPost=/d" -e "/^WatchdogSec=/d" -e "/^NotifyAccess=/d" -e "/^Requires=/d" \
    -e "/^After=compilerd.socket/d" -e "/^Also=/d" -e "/^Restart=/d" \
    /usr/lib/systemd/system/compilerd.service >/run/systemd/system/compilerd-probe.service &&
    systemctl daemon-reload'
check "under compilerd.service's hardening, user compilerd reaches docker.sock (GET /_ping)" \
    cx systemctl start compilerd-probe.service
cxsh 'rm -f /run/systemd/system/compilerd-probe.service; systemctl daemon-reload'

# --- serve -----------------------------------------------------------------------------------
# Test settings: the test image, no self-halt, a short drain.
configure() { # KEY=VALUE... (TOML values)
    cp packaging/config.toml "$tmp/config.toml"
    local kv key
    for kv in "$@"; do
        key=${kv%%=*}
        sed -i -E "/^#?$key = /d" "$tmp/config.toml"
        echo "$key = ${kv#*=}" >>"$tmp/config.toml"
    done
    docker cp "$tmp/config.toml" "$ctr:/etc/compilerd/config.toml" >/dev/null &&
        cx chmod 644 /etc/compilerd/config.toml && cx chown root:root /etc/compilerd/config.toml &&
        cx compilerd check-config --config /etc/compilerd/config.toml >/dev/null
}
check "test settings pass check-config" configure "image=\"$test_image\"" shutdown=false "drain=\"${drain}s\""

compile() { # prints the HTTP status (000: no answer) on the first line, then the body
    cx rm -f /tmp/answer.json
    cx curl -s --max-time 30 -o /tmp/answer.json -w '%{http_code}\n' --data-binary "$program" \
        http://127.0.0.1:8181/compile
    cx cat /tmp/answer.json 2>/dev/null
}
answer=$(compile)
code=$(printf '%s\n' "$answer" | head -1)
body=$(printf '%s\n' "$answer" | tail -n +2)
info "POST /compile answered $code: $body"
if [ -n "$body" ] && printf '%s' "$body" | jq -e 'type == "object"' >/dev/null 2>&1; then
    pass "POST /compile through the socket got a JSON answer"
else
    fail "POST /compile through the socket got a JSON answer"
fi
if [ "$code" = 200 ] &&
    printf '%s' "$body" | jq -e --arg out "$expected_output" '[.Events[]?.Message] | join("") | contains($out)' >/dev/null 2>&1; then
    pass "POST /compile started compilerd.service and answered 200 with the program's output"
else
    fail "POST /compile started compilerd.service and answered 200 with the program's output"
fi
check "GET /healthz answers ok" eval '[ "$(cx curl -s --max-time 5 http://127.0.0.1:8181/healthz)" = ok ]'
active=$(prop compilerd.service ActiveState)
status=$(prop compilerd.service StatusText)
info "systemctl show compilerd: ActiveState=$active StatusText=$status"
check "compilerd.service is active after the first request" [ "$active" = active ]
check "StatusText is a live status line ('serving: ...')" eval '[[ $status == serving:* ]]'
# tracing-journald names a field FOO as F_FOO unless told otherwise; either will do.
check "the journal holds structured compile entries (PROGRAM_HASH, REQUEST_ID)" cxsh \
    'journalctl -u compilerd.service -o json | grep -Eq "\"(F_)?PROGRAM_HASH\":\"[0-9a-f]+\"" &&
     journalctl -u compilerd.service -o json | grep -Eq "\"(F_)?REQUEST_ID\":"'
pid=$(prop compilerd.service MainPID)
check "the daemon runs as compilerd, in a private network namespace" cxsh \
    "[ ${pid:-0} -gt 0 ] && [ \"\$(stat -c %U /proc/$pid)\" = compilerd ] &&
     [ \"\$(readlink /proc/$pid/ns/net)\" != \"\$(readlink /proc/1/ns/net)\" ]"

# --- upgrade: a running daemon is restarted on the new binary ----------------------------------
out=$(cx dpkg -i /tmp/compilerd.deb 2>&1) || printf '%s\n' "$out" | sed 's/^/    /'
newpid=$(prop compilerd.service MainPID)
check "an upgrade (dpkg -i over the installed package) restarts the running daemon" \
    eval '[ "${pid:-0}" != 0 ] && [ "${newpid:-0}" != 0 ] && [ "$newpid" != "$pid" ] &&
          [ "$(prop compilerd.service ActiveState)" = active ]'
check "after the upgrade compilerd.socket is still enabled and listening" \
    [ "$(prop compilerd.socket ActiveState)/$(cx systemctl is-enabled compilerd.socket 2>/dev/null)" = active/enabled ]
check "the upgrade kept the edited conffile" cxsh "grep -qx 'image = \"$test_image\"' /etc/compilerd/config.toml"

# --- systemctl stop: drain, clean exit, no poweroff -------------------------------------------
t0=$(date +%s.%N)
cx systemctl stop compilerd.service 2>/dev/null
t1=$(date +%s.%N)
took=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
info "systemctl stop compilerd took ${took}s (drain ${drain}s); Result=$(prop compilerd.service Result) ExecMainStatus=$(prop compilerd.service ExecMainStatus)"
check "systemctl stop: the daemon drained (stop took >= drain)" \
    awk -v t="$took" -v d="$drain" 'BEGIN { exit !(t >= d && t < 60) }'
check "systemctl stop: exited 0, Result=success" \
    [ "$(prop compilerd.service Result)/$(prop compilerd.service ExecMainStatus)" = success/0 ]
check "systemctl stop: logged its drain steps" cxsh \
    'journalctl -u compilerd.service -o cat | grep -q "every accepted request answered"'
sleep 1
check "systemctl stop did not power the machine off" running
check "systemctl stop did not start a shutdown" [ "$(cx systemctl is-system-running 2>/dev/null)" != stopping ]
check "compilerd.socket still listens after the service stopped" [ "$(prop compilerd.socket ActiveState)" = active ]

# --- remove, purge -----------------------------------------------------------------------------
out=$(cx env DEBIAN_FRONTEND=noninteractive apt-get remove -y compilerd 2>&1) ||
    { fail "apt-get remove compilerd"; printf '%s\n' "$out" | tail -5 | sed 's/^/    /'; }
check "after remove: compilerd.socket and compilerd.service are inactive" \
    [ "$(prop compilerd.socket ActiveState)/$(prop compilerd.service ActiveState)" = inactive/inactive ]
check "after remove: no compilerd process, no binary" eval '[ -z "$(compilerd_procs)" ] && ! cx test -e /usr/bin/compilerd'
check "after remove: the conffile stays until purge" cx test -f /etc/compilerd/config.toml
out=$(cx env DEBIAN_FRONTEND=noninteractive apt-get purge -y compilerd 2>&1) ||
    { fail "apt-get purge compilerd"; printf '%s\n' "$out" | tail -5 | sed 's/^/    /'; }
check "after purge: /etc/compilerd is gone" eval '! cx test -e /etc/compilerd'
leftovers=$(cxsh 'ls -d /usr/lib/systemd/system/compilerd.* /lib/systemd/system/compilerd.* \
    /etc/systemd/system/compilerd.* /etc/systemd/system/*/compilerd.* /usr/lib/compilerd \
    /usr/lib/sysusers.d/compilerd.conf /usr/share/doc/compilerd /usr/share/compilerd /var/lib/systemd/deb-systemd-helper-enabled/*compilerd* 2>/dev/null')
check "after purge: no unit file, enablement link, mask, helper or doc left${leftovers:+: $leftovers}" [ -z "$leftovers" ]
check "after purge: systemd knows no compilerd unit" \
    [ "$(prop compilerd.socket LoadState)/$(prop compilerd.service LoadState)" = not-found/not-found ]
check "after purge: no compilerd process" [ -z "$(compilerd_procs)" ]
check "after purge: dpkg has forgotten the package" eval '! cx dpkg-query -W compilerd >/dev/null 2>&1'
if cx id compilerd >/dev/null 2>&1; then
    info "the compilerd system user remains after purge, as Debian packages leave their users"
fi

# --- the .rpm ------------------------------------------------------------------------------------
dpkg-deb -c "$deb" | awk '$1 !~ /^d/ { sub(/^\./, "", $6); print $6 }' | sort >"$tmp/deb.files"
rpm -qpl "$rpm" 2>/dev/null | sort >"$tmp/rpm.files"
# cargo-deb writes Debian's copyright file; everything else is the same in both.
extra=$(comm -3 "$tmp/deb.files" "$tmp/rpm.files" | grep -v '^/usr/share/doc/compilerd/copyright$' | tr -d '\t' | tr '\n' ' ')
check "rpm -qpl lists the same files as the .deb${extra:+ (differs: $extra)}" [ -z "$extra" ]
check "rpm -qpl: /etc/compilerd/config.toml is a %config(noreplace) file" \
    eval 'rpm -qp --qf "[%{FILEFLAGS:fflags} %{FILENAMES}\n]" "$rpm" 2>/dev/null | grep -q "^cn.* /etc/compilerd/config.toml$"'
rpm -qp --scripts "$rpm" >"$tmp/scripts" 2>/dev/null
check "rpm -qp --scripts: %post creates the user, enables and starts the socket on install, try-restarts on upgrade" \
    eval 'grep -q "systemd-sysusers /usr/lib/sysusers.d/compilerd.conf" "$tmp/scripts" &&
          grep -q "systemctl enable --now compilerd.socket" "$tmp/scripts" &&
          grep -q "systemctl try-restart compilerd.service" "$tmp/scripts"'
check "rpm -qp --scripts: %preun stops and disables on erase" \
    eval 'grep -q "disable --now compilerd.socket compilerd.service" "$tmp/scripts"'
requires=$(rpm -qp --requires "$rpm" 2>/dev/null | grep -Ev '^(lib|rpmlib|rtld)' | sort -u | tr '\n' ',')
recommends=$(rpm -qp --recommends "$rpm" 2>/dev/null | tr '\n' ',')
info "rpm requires: $requires recommends: $recommends"
check "rpm -qp --requires: systemd" eval '[[ ,$requires == *,systemd,* ]]'
check "rpm -qp --recommends: a Docker engine" eval '[[ $recommends == *docker* ]]'
scratch=$tmp/rpmroot
mkdir -p "$scratch"
if rpm -i --nodeps --noscripts --root "$scratch" "$rpm" >"$tmp/rpm-i.log" 2>&1 &&
    rpm --root "$scratch" -V --nodeps compilerd >>"$tmp/rpm-i.log" 2>&1; then
    pass "rpm -i --nodeps --noscripts into a scratch root, rpm -V clean"
else
    fail "rpm -i --nodeps --noscripts into a scratch root"
    sed 's/^/    /' "$tmp/rpm-i.log"
fi

# The scriptlets under the container's systemd: lay the rpm's files down as rpm would, then run
# %post with 1 (install), %post with 2 (upgrade), %preun with 0 and %postun with 0 (erase).
scriptlet() { # TAG ARG
    rpm -qp --qf "%{$1}" "$rpm" 2>/dev/null >"$tmp/$1.sh"
    docker exec -i "$ctr" sh -s "$2" <"$tmp/$1.sh" >/dev/null 2>&1
}
# The files come from the scratch root above (Debian's minimal root has no rpm or cpio).
rpm -qpl "$rpm" 2>/dev/null | sed 's|^/||' >"$tmp/rpm.list"
tar -C "$scratch" -c -T "$tmp/rpm.list" | docker exec -i "$ctr" tar -C / -x
check "the .rpm's files laid down in the container" cx test -x /usr/bin/compilerd
scriptlet POSTIN 1
check "rpm %post (install): compilerd.socket enabled and listening, service not running" \
    [ "$(prop compilerd.socket ActiveState)/$(cx systemctl is-enabled compilerd.socket 2>/dev/null)/$(prop compilerd.service ActiveState)" = active/enabled/inactive ]
configure "image=\"$test_image\"" shutdown=false "drain=\"1s\"" >/dev/null
answer=$(compile)
check "rpm install: POST /compile answered 200" [ "$(printf '%s\n' "$answer" | head -1)" = 200 ]
pid=$(prop compilerd.service MainPID)
scriptlet POSTIN 2
newpid=$(prop compilerd.service MainPID)
check "rpm %post (upgrade): the running daemon is restarted" \
    eval '[ "${pid:-0}" != 0 ] && [ "${newpid:-0}" != 0 ] && [ "$newpid" != "$pid" ]'
scriptlet PREUN 0
check "rpm %preun (erase): socket and service stopped, socket disabled" \
    [ "$(prop compilerd.socket ActiveState)/$(prop compilerd.service ActiveState)/$(cx systemctl is-enabled compilerd.socket 2>/dev/null)" = inactive/inactive/disabled ]
rpm -qpl "$rpm" 2>/dev/null | sed 's/^/rm -f /' | docker exec -i "$ctr" sh
scriptlet POSTUN 0
check "rpm erase: no compilerd unit known, no /etc/compilerd, no process" \
    eval '[ "$(prop compilerd.socket LoadState)/$(prop compilerd.service LoadState)" = not-found/not-found ] &&
          ! cx test -e /etc/compilerd && [ -z "$(compilerd_procs)" ]'

# --- safe by default: the shipped config never powers the machine off ---------------------------
cx dpkg -i /tmp/compilerd.deb >/dev/null 2>&1 || fail "reinstall after purge"
check "the shipped /etc/compilerd/config.toml says shutdown = false" cx grep -qx 'shutdown = false' /etc/compilerd/config.toml
# The shipped file with only the image and a lifetime far shorter than the wait below: its
# `shutdown` line is the package's. Nothing may happen when the lifetime has passed.
configure "image=\"$test_image\"" 'lifetime="2s"' 'drain="1s"' >/dev/null
check "  ...and the shipped shutdown line is what the daemon reads" cx grep -qx 'shutdown = false' /etc/compilerd/config.toml
answer=$(compile)
pid=$(prop compilerd.service MainPID)
check "with the shipped settings the daemon starts and answers 200" [ "$(printf '%s\n' "$answer" | head -1)" = 200 ]
# Waiting is the point here: three lifetimes pass, and the daemon must still be there.
sleep 6
check "with the shipped settings the daemon is still up three lifetimes later (same process)" \
    eval '[ "$(prop compilerd.service ActiveState)" = active ] && [ "$(prop compilerd.service MainPID)" = "$pid" ] &&
          [ "$(cx curl -s --max-time 5 http://127.0.0.1:8181/healthz)" = ok ]'
check "  ...it never planned a halt (no 'shutting down at', no 'self-halt' in the journal)" eval \
    '! cxsh "journalctl -u compilerd.service -o cat | grep -Eq \"shutting down at|self-halt deadline\""'
check "  ...and the machine is running" running
# The shared-cache drop-in the package ships opens the network to Redis and nothing else.
cxsh 'mkdir -p /etc/systemd/system/compilerd.service.d &&
      cp /usr/share/compilerd/systemd/shared-cache.conf /etc/systemd/system/compilerd.service.d/ &&
      systemctl daemon-reload'
check "the shipped shared-cache drop-in: PrivateNetwork=no, AF_INET allowed, IPAddressAllow set" eval \
    '[ "$(prop compilerd.service PrivateNetwork)" = no ] &&
     [[ "$(prop compilerd.service RestrictAddressFamilies)" == *AF_INET* ]] &&
     [ -n "$(prop compilerd.service IPAddressAllow)" ]'
cxsh 'rm -rf /etc/systemd/system/compilerd.service.d && systemctl daemon-reload'
cx systemctl stop compilerd.service 2>/dev/null

# --- self-halt -------------------------------------------------------------------------------------
# 1. An administrator's stop that lands during a self-halt drain must not power off, even though
#    the daemon then exits with status 3.
configure "image=\"$test_image\"" shutdown=true 'lifetime="4s"' 'drain="20s"' >/dev/null
compile >/dev/null
if wait_for 10 cxsh 'journalctl -u compilerd.service -o cat | grep -q "self-halt deadline passed"'; then
    cx systemctl stop compilerd.service 2>/dev/null
    info "stop during the self-halt drain: Result=$(prop compilerd.service Result) ExecMainStatus=$(prop compilerd.service ExecMainStatus)"
    sleep 2
    check "systemctl stop during a self-halt drain does not power off" running
    check "  ...and halt-if-requested saw the stop job" cxsh \
        'journalctl -u compilerd.service -o cat | grep -q "not powering off" || [ "$(systemctl show -P ExecMainStatus compilerd.service)" != 3 ]'
else
    fail "the self-halt deadline passed within 10s of the first request"
fi
# 2. The real thing, last: the daemon exits 3 by itself and the unit powers the machine off.
configure "image=\"$test_image\"" shutdown=true 'lifetime="4s"' 'drain="1s"' >/dev/null
compile >/dev/null
if timeout 40 docker wait "$ctr" >/dev/null 2>&1; then
    pass "self-halt: the container powered itself off"
    mkdir -p "$tmp/journal"
    docker cp "$ctr:/var/log/journal" "$tmp/" >/dev/null 2>&1
    journalctl -D "$tmp/journal" -o cat -u compilerd.service >"$tmp/halt.log" 2>/dev/null
    journalctl -D "$tmp/journal" -o cat >"$tmp/all.log" 2>/dev/null
    check "self-halt: the daemon exited with status 3 on its own and halt-if-requested powered off" \
        grep -q "exited with status 3 on its own: .*powering off" "$tmp/halt.log"
    check "self-halt: systemd went through poweroff.target" grep -qi "power.off" "$tmp/all.log"
else
    fail "self-halt: the container powered itself off within 40s"
fi

echo "package-test: $failures failure(s) in $(($(date +%s) - started))s"
[ $failures -eq 0 ]
