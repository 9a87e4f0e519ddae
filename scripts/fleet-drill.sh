#!/usr/bin/env bash
# Fleet drill: two compilerd daemons behind haproxy, sharing answers through Redis, on loopback.
#
# What it proves, and prints as PASS/FAIL lines (exit status 1 on any failure):
#   1. standalone Redis: a program run through daemon A is a SHARED-HIT on daemon B;
#      Redis stopped under load and started again: no request fails, sharing resumes by itself.
#   2. self-halt under load: A (short --lifetime, a test --halt-command) fails /healthz, haproxy
#      marks it down within its check interval, no client request fails, A's in-flight runs are
#      answered, A's halt command runs after its drain, B keeps serving.
#   3. a 3-node Redis Cluster: SHARED-HIT again; one node stopped under load and started again:
#      no request fails.
# Then one FIGURES line: requests sent, failed, shared hits, time for haproxy to mark A down.
#
# Everything listens on 127.0.0.1 on ports the kernel picked; every process started here is
# stopped on exit. Needs: redis-server, redis-cli, haproxy, wrk, curl, bwrap and the busybox
# rootfs of scripts/build-test-image.sh. Environment: COMPILERD (the binary, default
# target/release/compilerd), ROOTFS (default /var/lib/compilerd-test/rootfs), KEEP=1 keeps the
# work directory (logs of every process).
set -uo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
bin=${COMPILERD:-target/release/compilerd}
rootfs=${ROOTFS:-/var/lib/compilerd-test/rootfs}
work=$(mktemp -d /tmp/compilerd-fleet.XXXXXX)
# haproxy: a health check every 300ms, down after 2 failures, up after 2 successes. A's drain
# (3s) is much longer than fall x inter, as it must be in production too.
check_inter_ms=300
drain=3s
# The lookup budget: more than the 20ms default, as this machine may be busy with other jobs
# (tests/shared_cache.rs holds the default to its budget). LOOKUP_BUDGET=20ms for the default.
lookup_budget=${LOOKUP_BUDGET:-250ms}

failures=0
pids=()
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
check() { local name=$1; shift; if "$@"; then pass "$name"; else fail "$name"; fi; }
die() { echo "FAIL: $*"; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
free_port() { perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1:0")->sockport'; }
# wait_until SECONDS COMMAND...: poll (every 50ms) until COMMAND succeeds.
wait_until() {
    local deadline=$(($(date +%s) + $1)); shift
    until "$@" >/dev/null 2>&1; do
        [ "$(date +%s)" -lt "$deadline" ] || return 1
        sleep 0.05
    done
}
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
    if [ "${KEEP:-}" = 1 ]; then echo "logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

for tool in redis-server redis-cli haproxy wrk curl bwrap perl; do
    command -v "$tool" >/dev/null || die "$tool is missing (apt-get install redis-server haproxy wrk curl bubblewrap)"
done
[ -x "$bin" ] || die "no compilerd binary at $bin (cargo build --release, or set COMPILERD)"
[ -d "$rootfs" ] || die "no test rootfs at $rootfs (scripts/build-test-image.sh)"

# --- processes -------------------------------------------------------------------------------
# start_redis NAME PORT [EXTRA ARGS...]: a redis-server of our own (never the system's service).
start_redis() {
    local name=$1 port=$2; shift 2
    mkdir -p "$work/$name"
    redis-server --port "$port" --bind 127.0.0.1 --dir "$work/$name" --save "" --appendonly no \
        "$@" >>"$work/$name.log" 2>&1 &
    eval "pid_$name=$!"; pids+=($!)
    wait_until 10 redis-cli -p "$port" ping || { tail -5 "$work/$name.log"; die "redis $name did not start"; }
}
stop_redis() { redis-cli -p "$1" shutdown nosave >/dev/null 2>&1; }

# start_daemon NAME PORT SHARED-CACHE-URL [EXTRA ARGS...]
start_daemon() {
    local name=$1 port=$2 url=$3; shift 3
    "$bin" --backend bwrap --rootfs "$rootfs" --log-format text --address "127.0.0.1:$port" \
        --max-concurrent-runs 4 --drain "$drain" --shared-cache "$url" \
        --shared-cache-timeout "$lookup_budget" "$@" \
        >>"$work/$name.log" 2>&1 &
    eval "pid_$name=$!"; pids+=($!)
    wait_until 10 curl -fsS "http://127.0.0.1:$port/healthz" || die "daemon $name did not start"
}
metric() { # PORT SERIES
    curl -fsS "http://127.0.0.1:$1/metrics" | awk -v s="$2" '$1 == s { print $2 }'
}
shared_up() { [ "$(metric "$1" compilerd_shared_cache_up)" = 1 ]; }
# x_cache PORT PROGRAM: the X-Cache header of the answer, after checking it is a 200.
x_cache() {
    curl -sS -o /dev/null -D - --data-binary "$2" "http://127.0.0.1:$1/compile" |
        awk 'NR == 1 && $2 != 200 { print "status-" $2; exit } tolower($1) == "x-cache:" { gsub("\r", ""); print $2 }'
}

# shared_once PROGRAM: runs PROGRAM through A, waits until A wrote its answer to Redis, then
# prints the X-Cache of the same program on B (asked once: a miss there runs it and caches it).
shared_once() {
    local before
    before=$(metric "$port_a" compilerd_shared_cache_writes_total)
    x_cache "$port_a" "$1" >/dev/null
    wait_until 5 eval '[ "$(metric "$port_a" compilerd_shared_cache_writes_total)" != "$before" ]'
    x_cache "$port_b" "$1"
}
# shared_round TAG N: N new programs through A then B; prints B's answers, e.g. "SHARED-HIT ...".
shared_round() {
    local n out=()
    for n in $(seq "$2"); do out+=("$(shared_once "echo $1-$n-$RANDOM$RANDOM")"); done
    echo "${out[*]}"
    echo "INFO: B's shared lookups so far: timeouts $(metric "$port_b" 'compilerd_shared_cache_errors_total{kind="timeout",op="get"}'), errors $(metric "$port_b" 'compilerd_shared_cache_errors_total{kind="error",op="get"}'), skipped $(metric "$port_b" 'compilerd_shared_cache_skipped_total{op="get"}')" >&2
}
all_shared() { [ -n "$1" ] && [ -z "$(printf '%s\n' $1 | grep -vx SHARED-HIT)" ]; }

port_a=$(free_port); port_b=$(free_port); port_lb=$(free_port); port_stats=$(free_port)
cat >"$work/haproxy.cfg" <<EOF
global
    log stderr format raw local0 info
defaults
    mode http
    log global
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    option redispatch
    retries 3
    retry-on conn-failure empty-response
frontend playground
    bind 127.0.0.1:$port_lb
    default_backend compilerd
frontend stats
    bind 127.0.0.1:$port_stats
    stats enable
    stats uri /stats
backend compilerd
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server check inter ${check_inter_ms}ms fall 2 rise 2
    server a 127.0.0.1:$port_a
    server b 127.0.0.1:$port_b
EOF
haproxy -c -f "$work/haproxy.cfg" >/dev/null || die "haproxy -c refused the drill's configuration"
haproxy -db -f "$work/haproxy.cfg" >>"$work/haproxy.log" 2>&1 &
pid_haproxy=$!; pids+=($!)
lb_status() { # SERVER: UP, DOWN, "UP 1/2", ...
    curl -fsS "http://127.0.0.1:$port_stats/stats;csv" | awk -F, -v s="$1" '$1 == "compilerd" && $2 == s { print $18 }'
}
both_up() { [ "$(lb_status a)" = UP ] && [ "$(lb_status b)" = UP ]; }

# --- load --------------------------------------------------------------------------------------
# Mostly popular programs (answered from the caches), every fifth a unique one that sleeps, so
# that runs are in flight whenever something happens.
cat >"$work/load.lua" <<'EOF'
local n = 0
math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
request = function()
    n = n + 1
    local body
    if n % 5 == 0 then
        body = "sleep 0.2; echo run-" .. math.random(1, 1000000000)
    else
        body = "echo popular-" .. (n % 40)
    end
    return wrk.format("POST", "/compile", nil, body)
end
EOF
sent_total=0; failed_total=0
# load_start SECONDS: wrk through haproxy in the background.
load_start() {
    wrk -t 2 -c 4 -d "$1s" --timeout 10s -s "$work/load.lua" "http://127.0.0.1:$port_lb/" >"$work/wrk.out" 2>&1 &
    pid_wrk=$!; pids+=($!)
}
# load_end NAME: waits for wrk and counts its requests and failures (non-2xx, socket errors).
load_end() {
    wait "$pid_wrk"
    local sent bad sock
    sent=$(awk '/requests in/ { print $1 }' "$work/wrk.out")
    bad=$(awk '/Non-2xx/ { print $NF }' "$work/wrk.out")
    sock=$(awk '/Socket errors/ { gsub(",", ""); print $4 + $6 + $8 + $10 }' "$work/wrk.out")
    sent=${sent:-0}; bad=$((${bad:-0} + ${sock:-0}))
    sent_total=$((sent_total + sent)); failed_total=$((failed_total + bad))
    echo "INFO: $1: $sent requests, $bad failed"
    cat "$work/wrk.out" >>"$work/wrk.log"
    check "$1: requests sent through haproxy ($sent) all answered 200" [ "$sent" -gt 0 -a "$bad" -eq 0 ]
}

# --- 1. standalone Redis -----------------------------------------------------------------------
port_r=$(free_port)
start_redis redis "$port_r"
url="redis://127.0.0.1:$port_r"
start_daemon a "$port_a" "$url"
start_daemon b "$port_b" "$url"
check "both daemons reached Redis (compilerd_shared_cache_up 1)" wait_until 10 eval 'shared_up $port_a && shared_up $port_b'
check "haproxy sees both daemons up" wait_until 10 both_up
prog="echo shared-$RANDOM$RANDOM"
check "a program run through A is a MISS on A" [ "$(x_cache "$port_a" "$prog")" = MISS ]
prog="echo shared-$RANDOM$RANDOM"
check "a program run through A is a SHARED-HIT on B" [ "$(shared_once "$prog")" = SHARED-HIT ]
check "...and then a HIT on B (the shared hit filled B's local cache)" [ "$(x_cache "$port_b" "$prog")" = HIT ]

# Only misses ask Redis (popular programs are answered locally), so it takes a few seconds of
# load for each daemon to see enough failed operations to mark the tier down.
load_start 15
sleep 1
stop_redis "$port_r"; wait "$pid_redis" 2>/dev/null
t_stop=$(now)
check "Redis stopped under load: both daemons mark the shared cache down" \
    wait_until 10 eval '! shared_up $port_a && ! shared_up $port_b'
echo "INFO: both daemons marked the shared cache down $(since "$t_stop")s after Redis stopped"
start_redis redis "$port_r"
t_redis=$(now)
check "Redis started again: both daemons mark the shared cache up by themselves" \
    wait_until 10 eval 'shared_up $port_a && shared_up $port_b'
echo "INFO: sharing back $(since "$t_redis")s after Redis restarted"
load_end "Redis stopped and started under load"
got=$(shared_round after-outage 3)
check "sharing resumed: new programs run through A are SHARED-HITs on B ($got)" all_shared "$got"
grep -q "shared cache is down" "$work/a.log" && grep -q "shared cache is up" "$work/a.log"
check "A logged the change of state (down, up)" [ $? -eq 0 ]

# --- 2. A halts itself under load -------------------------------------------------------------
shared_hits_a=$(( $(metric "$port_a" compilerd_shared_cache_hits_total) ))
kill "$pid_a"; wait "$pid_a" 2>/dev/null
wait_until 5 eval '[ "$(lb_status a)" != UP ]'
start_daemon a "$port_a" "$url" --shutdown true --lifetime 8s --halt-command "touch $work/a.halted"
check "haproxy sees the new A up" wait_until 10 both_up
load_start 12
t_lameduck= t_down= t_halted=
deadline=$(($(date +%s) + 15))
while [ "$(date +%s)" -lt "$deadline" ]; do
    if [ -z "$t_lameduck" ] && [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port_a/healthz")" = 503 ]; then
        t_lameduck=$(now)
    fi
    if [ -n "$t_lameduck" ] && [ -z "$t_down" ] && [[ "$(lb_status a)" == DOWN* ]]; then
        t_down=$(now)
    fi
    if ! kill -0 "$pid_a" 2>/dev/null; then break; fi
    sleep 0.03
done
wait "$pid_a"; a_exit=$?
mark_down_s=
if [ -n "$t_lameduck" ] && [ -n "$t_down" ]; then
    mark_down_s=$(awk -v a="$t_lameduck" -v b="$t_down" 'BEGIN { printf "%.2f", b - a }')
fi
check "A failed /healthz (lameduck) before halting" [ -n "$t_lameduck" ]
# fall x inter, plus one interval for the phase of the checks, plus the polling here.
limit=$(awk -v i="$check_inter_ms" 'BEGIN { printf "%.2f", (3 * i + 200) / 1000 }')
check "haproxy marked A down ${mark_down_s:-never}s after its /healthz turned 503 (within ${limit}s)" \
    awk -v t="${mark_down_s:-99}" -v l="$limit" 'BEGIN { exit !(t <= l) }'
check "A exited 0 after running its halt command" [ "$a_exit" = 0 -a -f "$work/a.halted" ]
drained=$(grep -n "every accepted request answered" "$work/a.log" | tail -1 | cut -d: -f1)
check "A answered every accepted request (in-flight runs included) before halting" [ -n "$drained" ]
# From A's own log line (the poll above sees the 503 a little late).
t_lameduck_log=$(date -d "$(grep "self-halt deadline passed" "$work/a.log" | tail -1 | cut -d' ' -f1)" +%s.%N 2>/dev/null)
if [ -f "$work/a.halted" ] && [ -n "$t_lameduck_log" ]; then
    halted_after=$(awk -v a="$t_lameduck_log" -v b="$(stat -c %.Y "$work/a.halted")" 'BEGIN { printf "%.2f", b - a }')
    check "A's halt command ran after its drain (${halted_after}s after lameduck, drain $drain)" \
        awk -v t="$halted_after" -v d="${drain%s}" 'BEGIN { exit !(t >= d) }'
fi
runs_a=$(grep -c 'cache="MISS" outcome="ok"' "$work/a.log")
echo "INFO: A ran $runs_a programs in its life, haproxy: $(grep -c 'is DOWN' "$work/haproxy.log") DOWN event(s)"
load_end "A halted itself under load"
check "B keeps serving through haproxy" [ "$(curl -s -o /dev/null -w '%{http_code}' --data-binary 'echo b-alive' "http://127.0.0.1:$port_lb/compile")" = 200 ]
shared_hits=$((shared_hits_a + $(metric "$port_b" compilerd_shared_cache_hits_total)))

# --- 3. a 3-node Redis Cluster ----------------------------------------------------------------
kill "$pid_b"; wait "$pid_b" 2>/dev/null
stop_redis "$port_r"
# Three distinct ports, each with its cluster bus port (+10000) in range.
cports=()
while [ ${#cports[@]} -lt 3 ]; do
    p=$(free_port)
    [ "$p" -le 55535 ] && [[ " ${cports[*]} $port_a $port_b $port_lb $port_stats " != *" $p "* ]] && cports+=("$p")
done
i=0
for p in "${cports[@]}"; do
    start_redis "c$i" "$p" --cluster-enabled yes --cluster-config-file nodes.conf \
        --cluster-node-timeout 1000 --cluster-require-full-coverage no
    i=$((i + 1))
done
redis-cli --cluster create "${cports[@]/#/127.0.0.1:}" --cluster-replicas 0 --cluster-yes \
    >"$work/cluster-create.log" 2>&1 || die "redis-cli --cluster create failed (see $work/cluster-create.log)"
check "the cluster formed (cluster_state:ok)" wait_until 15 eval \
    'redis-cli -p ${cports[0]} cluster info | grep -q cluster_state:ok'
url="redis-cluster://127.0.0.1:${cports[0]},127.0.0.1:${cports[1]}"
start_daemon a "$port_a" "$url"
start_daemon b "$port_b" "$url"
check "cluster: both daemons reached it" wait_until 10 eval 'shared_up $port_a && shared_up $port_b'
check "cluster: haproxy sees both daemons up" wait_until 10 both_up
got=$(shared_round cluster 6)
check "cluster: programs run through A are SHARED-HITs on B, spread over the nodes ($got)" all_shared "$got"
load_start 7
sleep 1.5
stop_redis "${cports[2]}"; wait "$pid_c2" 2>/dev/null
sleep 2.5
start_redis c2 "${cports[2]}" --cluster-enabled yes --cluster-config-file nodes.conf \
    --cluster-node-timeout 1000 --cluster-require-full-coverage no
load_end "cluster: one node stopped and started under load"
check "cluster: the node rejoined (cluster_state:ok)" wait_until 15 eval \
    'redis-cli -p ${cports[2]} cluster info | grep -q cluster_state:ok'
got=$(shared_round cluster-after 9)
check "cluster: sharing works on every node again ($got)" all_shared "$got"
shared_hits=$((shared_hits + $(metric "$port_a" compilerd_shared_cache_hits_total) + $(metric "$port_b" compilerd_shared_cache_hits_total)))

echo "FIGURES: requests_sent=$sent_total failed=$failed_total shared_hits=$shared_hits mark_down_s=${mark_down_s:-none} check_inter_ms=$check_inter_ms"
echo "fleet-drill: $failures failure(s) in $(($(date +%s) - started))s"
[ $failures -eq 0 ] && [ "$failed_total" -eq 0 ]
