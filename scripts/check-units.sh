#!/usr/bin/env bash
# Static checks of what the packages ship, no root or running systemd needed:
#   - `systemd-analyze verify` of systemd/compilerd.{service,socket} prints nothing;
#   - `systemd-analyze security --offline` scores compilerd.service at 2.0 or lower ("OK");
#   - packaging/config.toml passes `compilerd check-config`, and so does the same file with every
#     commented-out `key = value` line enabled (each documented key is a real key);
#   - the halt helper powers off only for a self-requested halt (against a fake systemctl);
#   - the maintainer scripts and scriptlets parse as sh.
# Usage: scripts/check-units.sh [path/to/compilerd]   (default: target/debug/compilerd, built
# with `cargo build` when missing)
set -uo pipefail
cd "$(dirname "$0")/.."

failures=0
pass() { echo "PASS: $*"; }
fail() {
    echo "FAIL: $*"
    failures=$((failures + 1))
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- systemd-analyze verify ----------------------------------------------------------------
# verify wants the commands of ExecStart=/ExecStopPost= to exist and the units they depend on
# (sysinit.target, ...) to be loadable, so it runs against a root made of the host's own units
# plus ours and stand-ins for our executables.
root=$tmp/root
mkdir -p "$root/usr/lib/systemd" "$root/usr/bin" "$root/usr/lib/compilerd" "$root/etc"
for d in /usr/lib/systemd/system /lib/systemd/system; do
    if [ -d "$d" ]; then
        cp -a "$d" "$root/usr/lib/systemd/" 2>/dev/null
        break
    fi
done
cp systemd/compilerd.service systemd/compilerd.socket "$root/usr/lib/systemd/system/"
install -m 755 systemd/halt-if-requested "$root/usr/lib/compilerd/halt-if-requested"
printf '#!/bin/sh\n' >"$root/usr/bin/compilerd"
chmod 755 "$root/usr/bin/compilerd"
out=$(systemd-analyze verify --man=no --root="$root" compilerd.socket compilerd.service 2>&1)
rc=$?
if [ $rc -eq 0 ] && [ -z "$out" ]; then
    pass "systemd-analyze verify compilerd.socket compilerd.service: clean"
else
    fail "systemd-analyze verify (exit $rc):"
    printf '%s\n' "$out" | sed 's/^/    /'
fi

# --- systemd-analyze security --------------------------------------------------------------
out=$(systemd-analyze security --offline=true --threshold=20 systemd/compilerd.service 2>&1)
rc=$?
score=$(printf '%s\n' "$out" | sed -n 's/.*Overall exposure level for compilerd.service: \([0-9.]*\) \([A-Z]*\).*/\1 \2/p')
if [ $rc -eq 0 ] && [ -n "$score" ] && awk -v s="${score%% *}" 'BEGIN { exit !(s <= 2.0) }'; then
    pass "systemd-analyze security compilerd.service: $score (threshold 2.0)"
else
    fail "systemd-analyze security compilerd.service: '${score:-no score}' (exit $rc)"
    printf '%s\n' "$out" | grep '✗' | sed 's/^/    /'
fi

# --- the shipped config ----------------------------------------------------------------------
bin=${1:-target/debug/compilerd}
if [ ! -x "$bin" ]; then
    cargo build --quiet || fail "cargo build"
fi
if out=$("$bin" check-config --config packaging/config.toml 2>&1); then
    pass "packaging/config.toml passes check-config"
else
    fail "packaging/config.toml: $out"
fi
# Files the documented keys name are made here (the examples point into /etc/compilerd).
printf 'password\n' >"$tmp/auth"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=check-units -keyout "$tmp/ca.key" \
    -out "$tmp/ca.pem" >/dev/null 2>&1 || fail "openssl req (apt-get install openssl)"
sed -E -e 's/^#([a-z-]+ = )/\1/' \
    -e "s|^(shared-cache-auth-file = ).*|\\1\"$tmp/auth\"|" \
    -e "s|^(shared-cache-ca-file = ).*|\\1\"$tmp/ca.pem\"|" packaging/config.toml >"$tmp/all-keys.toml"
keys=$(grep -cE '^[a-z-]+ = ' "$tmp/all-keys.toml")
if out=$("$bin" check-config --config "$tmp/all-keys.toml" 2>&1); then
    pass "packaging/config.toml with all $keys documented keys enabled passes check-config"
else
    fail "packaging/config.toml with every documented key enabled: $out"
fi

printf 'tiemout = "1s"\n' >"$tmp/bad.toml"
if "$bin" check-config --config "$tmp/bad.toml" >/dev/null 2>&1; then
    fail "check-config accepted an unknown key (so the checks above prove nothing)"
else
    pass "check-config rejects an unknown key"
fi

# --- the halt helper -------------------------------------------------------------------------
# A fake systemctl that answers `show --property=Job` with $FAKE_JOB and records a poweroff.
mkdir -p "$tmp/bin"
cat >"$tmp/bin/systemctl" <<'EOF'
#!/bin/sh
case "$*" in
*--property=Job*) printf '%s\n' "${FAKE_JOB-}" ;;
*poweroff*) echo "$*" >>"$FAKE_LOG" ;;
esac
EOF
chmod 755 "$tmp/bin/systemctl"
# expect_halt WANT(yes|no) WHAT EXIT_CODE EXIT_STATUS SERVICE_RESULT JOB
expect_halt() {
    local want=$1 what=$2
    : >"$tmp/log"
    PATH="$tmp/bin:$PATH" FAKE_LOG="$tmp/log" EXIT_CODE=$3 EXIT_STATUS=$4 SERVICE_RESULT=$5 \
        FAKE_JOB=$6 sh systemd/halt-if-requested compilerd.service 2>/dev/null
    local got=no
    grep -q -- '--no-block poweroff' "$tmp/log" && got=yes
    if [ "$got" = "$want" ]; then
        pass "halt-if-requested: $what -> poweroff: $got"
    else
        fail "halt-if-requested: $what -> poweroff: $got, want $want"
    fi
}
expect_halt yes "exited 3 on its own" exited 3 success ""
expect_halt yes "exited 3 on its own (SuccessExitStatus dropped)" exited 3 exit-code ""
expect_halt no "systemctl stop, exit 0" exited 0 success "1234"
expect_halt no "exit 3 while a stop job is queued" exited 3 success "1234"
expect_halt no "exit 0 on its own" exited 0 success ""
expect_halt no "killed by a signal" killed 15 signal ""
expect_halt no "watchdog timeout" dumped 6 watchdog ""
expect_halt no "crash with status 1" exited 1 exit-code ""

# --- maintainer scripts ------------------------------------------------------------------------
for f in packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm \
    packaging/rpm/post.sh packaging/rpm/preun.sh packaging/rpm/postun.sh systemd/halt-if-requested; do
    if sh -n "$f"; then pass "sh -n $f"; else fail "sh -n $f"; fi
done

if [ $failures -eq 0 ]; then
    echo "check-units: all checks passed"
else
    echo "check-units: $failures check(s) failed"
    exit 1
fi
