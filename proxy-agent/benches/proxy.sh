#!/usr/bin/env bash
# lanyard-proxy beside HAProxy and a direct connection, in one run.
#
#   direct:  wrk -> nginx
#   lanyard: wrk -> lanyard-proxy A (outbound) -mTLS-> lanyard-proxy B (inbound, policy) -> nginx
#   haproxy: wrk -> haproxy A (mode tcp) -mTLS-> haproxy B (mode http, identity check) -> nginx
#
# All on loopback. Both pairs use ECDSA P-256 mesh leaves certified by the
# same `lanyard up` identity service (HAProxy's are fetched with
# `lanyard-proxy --agent-only`), TLS 1.3 only, keep-alive everywhere.
# The three setups are interleaved, each round in a rotated order, at one
# connection and at saturation; the table gives requests/s, p50/p99, the
# latency each proxy pair adds over direct, CPU per request for each pair
# (utime+stime of both proxies over the run, divided by requests) and each
# proxy's RSS at rest and after load.
#
# Installs haproxy, nginx and wrk (apt) when missing. Knobs:
#   BENCH_DURATION=10s  BENCH_ROUNDS=2
#   BENCH_SAT_THREADS=2 BENCH_SAT_CONNS=64   (the saturation load)
#   LANYARD_PROXY_CORES=2                    (lanyard-proxy's worker threads)
#   BENCH_HAPROXY_THREADS=$LANYARD_PROXY_CORES (nbthread of each HAProxy)
#   BENCH_KEEP=1                             (keep the temp dir, for logs)
#   LANYARD_BIN=... LANYARD_PROXY_BIN=...    (measure these binaries, e.g. an
#                                             earlier build, instead of building)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
BENCHES=$ROOT/proxy-agent/benches

DURATION=${BENCH_DURATION:-10s}
ROUNDS=${BENCH_ROUNDS:-2}
SAT_THREADS=${BENCH_SAT_THREADS:-2}
SAT_CONNS=${BENCH_SAT_CONNS:-64}
# lanyard-proxy runs LANYARD_PROXY_CORES tokio worker threads (default 2),
# and each HAProxy gets as many threads.
export LANYARD_PROXY_CORES=${LANYARD_PROXY_CORES:-2}
HAPROXY_THREADS=${BENCH_HAPROXY_THREADS:-$LANYARD_PROXY_CORES}

APP_PORT=18080
IDENTITY_PORT=18443
LANYARD_OUT_PORT=14140   # lanyard-proxy A's outbound listener (wrk's target)
LANYARD_B_IN_PORT=14143
LANYARD_B_ADMIN=14191
LANYARD_A_IN_PORT=24143
LANYARD_A_ADMIN=24191
AGENT_ADMIN_1=34191      # the --agent-only runs that fetch HAProxy's leaves
AGENT_ADMIN_2=34192
HAPROXY_OUT_PORT=15140   # haproxy A's listener (wrk's target)
HAPROXY_B_IN_PORT=15143

SERVER_ID=api.shop.serviceaccount.identity.linkerd.cluster.local
CLIENT_ID=web.front.serviceaccount.identity.linkerd.cluster.local

say() { echo "proxy.sh: $*" >&2; }
die() {
    say "$*"
    exit 1
}

# --- peers -------------------------------------------------------------
missing=()
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    say "installing ${missing[*]}"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >&2
fi
export PATH=$PATH:/usr/sbin

if [ -z "${LANYARD_BIN:-}" ] || [ -z "${LANYARD_PROXY_BIN:-}" ]; then
    say "building lanyard and lanyard-proxy (release)"
    cargo build --release -q -p lanyard-proxy -p lanyard >&2
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
LANYARD=${LANYARD_BIN:-$TARGET_DIR/release/lanyard}
PROXY=${LANYARD_PROXY_BIN:-$TARGET_DIR/release/lanyard-proxy}

for port in $APP_PORT $IDENTITY_PORT $LANYARD_OUT_PORT $LANYARD_B_IN_PORT $LANYARD_B_ADMIN \
    $LANYARD_A_IN_PORT $LANYARD_A_ADMIN $AGENT_ADMIN_1 $AGENT_ADMIN_2 $HAPROXY_OUT_PORT $HAPROXY_B_IN_PORT; do
    if [ -n "$(ss -Hltn "sport = :$port")" ]; then
        die "port $port is already in use on this machine; stop what listens there"
    fi
done

# --- processes and cleanup ---------------------------------------------
DIR=$(mktemp -d "${TMPDIR:-/tmp}/lanyard-proxy-bench.XXXXXX")
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 30); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ "${BENCH_KEEP:-0}" = 1 ]; then
        say "kept $DIR"
    else
        rm -rf "$DIR"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD in the background, logging to $DIR/NAME.log;
# the pid is left in $STARTED.
start() {
    local name=$1
    shift
    "$@" >"$DIR/$name.log" 2>&1 &
    STARTED=$!
    PIDS+=("$STARTED")
}

# forget PID: a process that has ended leaves the list, so that cleanup
# never signals a reused pid.
forget() {
    local keep=() pid
    for pid in "${PIDS[@]}"; do [ "$pid" = "$1" ] || keep+=("$pid"); done
    PIDS=("${keep[@]}")
}

# stop PID: ends one process this script started.
stop() {
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget "$1"
}

# wait_for WHAT CMD...: retries CMD for up to 20 s.
wait_for() {
    local what=$1
    shift
    for _ in $(seq 1 200); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    die "timed out waiting for $what (logs in $DIR; rerun with BENCH_KEEP=1 to keep them)"
}

http_200() { [ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" = 200 ]; }
listening() { [ -n "$(ss -Hltn "sport = :$1")" ]; }

# render TEMPLATE OUT: fills in the @NAME@ placeholders.
render() {
    sed -e "s|@DIR@|$DIR|g" -e "s|@APP_PORT@|$APP_PORT|g" \
        -e "s|@SERVER_ID@|$SERVER_ID|g" -e "s|@CLIENT_ID@|$CLIENT_ID|g" \
        -e "s|@THREADS@|$HAPROXY_THREADS|g" \
        -e "s|@LISTEN_PORT@|${LISTEN_PORT:-}|g" -e "s|@PEER_PORT@|${PEER_PORT:-}|g" \
        "$1" >"$2"
}

# --- backend -----------------------------------------------------------
mkdir -p "$DIR/nginx-tmp"
render "$BENCHES/nginx.conf.in" "$DIR/nginx.conf"
start nginx nginx -p "$DIR" -e "$DIR/nginx-error.log" -c "$DIR/nginx.conf"
NGINX_PID=$STARTED
wait_for nginx http_200 "http://127.0.0.1:$APP_PORT/"

# --- identity service, tokens, policy ----------------------------------
STATE=$DIR/state
start lanyard-up "$LANYARD" up --state-dir "$STATE" --metrics-addr 127.0.0.1:0 \
    --identity-addr "127.0.0.1:$IDENTITY_PORT"
CA=$STATE/secrets/lanyard/linkerd-trust-anchor/ca.crt
wait_for "the trust anchor" test -s "$CA"
wait_for "the identity service" listening "$IDENTITY_PORT"
"$LANYARD" token create --state-dir "$STATE" --namespace shop --service-account api >"$DIR/api.token"
"$LANYARD" token create --state-dir "$STATE" --namespace front --service-account web >"$DIR/web.token"
mkdir -p "$DIR/policy"
render "$BENCHES/policy.yaml.in" "$DIR/policy/policy.yaml"

# --- HAProxy's leaves: real mesh certificates from the same anchor -----
# agent_leaf IDENTITY TOKEN ADMIN OUT: one --agent-only run, stopped once
# it has written tls.crt, tls.key and ca.crt.
agent_leaf() {
    start "agent-$4" "$PROXY" --agent-only --out-dir "$DIR/$4" --identity "$1" \
        --token-file "$2" --trust-anchors "$CA" --identity-addr "127.0.0.1:$IDENTITY_PORT" \
        --admin-addr "127.0.0.1:$3"
    local pid=$STARTED
    wait_for "the $4 leaf" http_200 "http://127.0.0.1:$3/ready"
    stop "$pid"
}
agent_leaf "$SERVER_ID" "$DIR/api.token" $AGENT_ADMIN_1 leaf-api
agent_leaf "$CLIENT_ID" "$DIR/web.token" $AGENT_ADMIN_2 leaf-web
mkdir -p "$DIR/haproxy"
cat "$DIR/leaf-api/tls.crt" "$DIR/leaf-api/tls.key" >"$DIR/haproxy/server.pem"
cat "$DIR/leaf-web/tls.crt" "$DIR/leaf-web/tls.key" >"$DIR/haproxy/client.pem"
cp "$CA" "$DIR/haproxy/ca.pem"
LEAF_KIND=$(openssl x509 -in "$DIR/leaf-api/tls.crt" -noout -text |
    awk '/Public Key Algorithm/{alg=$NF} /NIST CURVE/{print alg, $NF; exit}')

# --- lanyard-proxy pair ------------------------------------------------
start lanyard-b "$PROXY" --identity "$SERVER_ID" --token-file "$DIR/api.token" \
    --trust-anchors "$CA" --identity-addr "127.0.0.1:$IDENTITY_PORT" \
    --admin-addr "127.0.0.1:$LANYARD_B_ADMIN" --inbound-addr "127.0.0.1:$LANYARD_B_IN_PORT" \
    --app-addr "127.0.0.1:$APP_PORT" --namespace shop --pod-label app=api \
    --policy-dir "$DIR/policy"
LANYARD_B=$STARTED
start lanyard-a "$PROXY" --identity "$CLIENT_ID" --token-file "$DIR/web.token" \
    --trust-anchors "$CA" --identity-addr "127.0.0.1:$IDENTITY_PORT" \
    --admin-addr "127.0.0.1:$LANYARD_A_ADMIN" --inbound-addr "127.0.0.1:$LANYARD_A_IN_PORT" \
    --outbound "127.0.0.1:$LANYARD_OUT_PORT=127.0.0.1:$LANYARD_B_IN_PORT,$SERVER_ID" \
    --namespace front
LANYARD_A=$STARTED

# --- HAProxy pair ------------------------------------------------------
LISTEN_PORT=$HAPROXY_B_IN_PORT render "$BENCHES/haproxy-inbound.cfg.in" "$DIR/haproxy/b.cfg"
LISTEN_PORT=$HAPROXY_OUT_PORT PEER_PORT=$HAPROXY_B_IN_PORT \
    render "$BENCHES/haproxy-outbound.cfg.in" "$DIR/haproxy/a.cfg"
haproxy -c -q -f "$DIR/haproxy/b.cfg" >&2 || die "haproxy B's configuration is refused"
haproxy -c -q -f "$DIR/haproxy/a.cfg" >&2 || die "haproxy A's configuration is refused"
start haproxy-b haproxy -db -f "$DIR/haproxy/b.cfg"
HAPROXY_B=$STARTED
start haproxy-a haproxy -db -f "$DIR/haproxy/a.cfg"
HAPROXY_A=$STARTED

wait_for "lanyard-proxy B /ready" http_200 "http://127.0.0.1:$LANYARD_B_ADMIN/ready"
wait_for "lanyard-proxy A /ready" http_200 "http://127.0.0.1:$LANYARD_A_ADMIN/ready"
wait_for "lanyard-proxy A's outbound listener" listening $LANYARD_OUT_PORT
wait_for "haproxy B" listening $HAPROXY_B_IN_PORT
wait_for "haproxy A" listening $HAPROXY_OUT_PORT
sleep 1

# --- measurements ------------------------------------------------------
rss_kib() { awk '/^VmRSS:/{print $2}' "/proc/$1/status"; }
hwm_kib() { awk '/^VmHWM:/{print $2}' "/proc/$1/status"; }
# utime+stime of every thread of the process, in clock ticks (fields 14
# and 15 of /proc/PID/stat, counted after the parenthesised name).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
# Context switches, voluntary and not, summed over the live threads.
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches:/{n += $2} END {print n}'; }
# counters PID: "ticks switches" now, or zeros for no process.
counters() {
    if [ -z "$1" ]; then
        echo "0 0"
    else
        echo "$(cpu_ticks "$1") $(switches "$1")"
    fi
}
CLK_TCK=$(getconf CLK_TCK)

declare -A REST
for name in LANYARD_A LANYARD_B HAPROXY_A HAPROXY_B; do
    REST[$name]=$(rss_kib "${!name}")
done

# Smoke checks, after the at-rest figures: every path answers 200 "ok",
# and lanyard-proxy B enforces its policy (plaintext, i.e. no identity,
# gets 403).
for port in $APP_PORT $LANYARD_OUT_PORT $HAPROXY_OUT_PORT; do
    body=$(curl -sS --fail "http://127.0.0.1:$port/") || die "no 200 through port $port"
    [ "$body" = ok ] || die "port $port answered \`$body\`, not ok"
done
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$LANYARD_B_IN_PORT/")
[ "$code" = 403 ] || die "lanyard-proxy B answered $code to a plaintext request, not 403: is the policy loaded?"

# to_us VALUE: wrk's latency (e.g. 61.00us, 1.23ms, 1.01s) in microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) m = 1; else if (v ~ /ms$/) m = 1000; else if (v ~ /s$/) m = 1000000
        else m = 1
        printf "%.1f", n * m
    }'
}

RESULTS=$DIR/results.tsv
: >"$RESULTS"
# measure ROUND LOAD SETUP: one wrk run, appended to $RESULTS.
measure() {
    local round=$1 load=$2 setup=$3 port a="" b="" threads conns
    case $setup in
    direct) port=$APP_PORT ;;
    lanyard) port=$LANYARD_OUT_PORT a=$LANYARD_A b=$LANYARD_B ;;
    haproxy) port=$HAPROXY_OUT_PORT a=$HAPROXY_A b=$HAPROXY_B ;;
    esac
    case $load in
    c1) threads=1 conns=1 ;;
    sat) threads=$SAT_THREADS conns=$SAT_CONNS ;;
    esac
    local a0 b0 a1 b1 nginx_before nginx_after
    read -r -a a0 <<<"$(counters "$a")"
    read -r -a b0 <<<"$(counters "$b")"
    nginx_before=$(cpu_ticks "$NGINX_PID")
    local out=$DIR/wrk-$round-$load-$setup.log
    # In the background, so that an interrupt stops the run at once.
    start "wrk-$round-$load-$setup" wrk -t"$threads" -c"$conns" -d"$DURATION" --latency "http://127.0.0.1:$port/"
    wait "$STARTED" || die "wrk failed for $setup $load; see $out"
    forget "$STARTED"
    read -r -a a1 <<<"$(counters "$a")"
    read -r -a b1 <<<"$(counters "$b")"
    nginx_after=$(cpu_ticks "$NGINX_PID")
    local requests rps p50 p99 bad errors
    requests=$(awk '/requests in/{print $1}' "$out")
    rps=$(awk '/^Requests\/sec:/{print $2}' "$out")
    p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$out")")
    p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$out")")
    bad=$(awk '/Non-2xx/{print $NF}' "$out")
    errors=$(awk '/Socket errors/{for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) s += $i; print s}' "$out")
    if [ -n "$bad" ] || [ -n "$errors" ]; then
        say "WARNING: $setup $load round $round: ${bad:-0} non-2xx responses, ${errors:-0} socket errors"
    fi
    if [ -z "$requests" ] || [ "$requests" -eq 0 ]; then
        die "wrk measured nothing for $setup $load; see $out"
    fi
    # round load setup req/s p50 p99 requests nginx-ticks errors, then
    # A's and B's ticks and context switches.
    printf '%s\t' "$round" "$load" "$setup" "$rps" "$p50" "$p99" "$requests" \
        "$((nginx_after - nginx_before))" "$((${bad:-0} + ${errors:-0}))" \
        "$((a1[0] - a0[0]))" "$((a1[1] - a0[1]))" "$((b1[0] - b0[0]))" "$((b1[1] - b0[1]))" >>"$RESULTS"
    echo >>"$RESULTS"
    say "$(printf 'round %s %-4s %-8s %10s req/s  p50 %8s us  p99 %8s us' "$round" "$load" "$setup" "$rps" "$p50" "$p99")"
}

SETUPS=(direct lanyard haproxy)
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
say "measuring: $ROUNDS rounds x {1 connection, ${SAT_THREADS}x${SAT_CONNS}} x {direct, lanyard, haproxy}, $DURATION each"
for round in $(seq 1 "$ROUNDS"); do
    i=0
    for load in c1 sat; do
        for k in 0 1 2; do
            measure "$round" "$load" "${SETUPS[$(((round - 1 + i + k) % 3))]}"
        done
        i=$((i + 1))
    done
done

declare -A AFTER HWM
for name in LANYARD_A LANYARD_B HAPROXY_A HAPROXY_B; do
    AFTER[$name]=$(rss_kib "${!name}")
    HWM[$name]=$(hwm_kib "${!name}")
done

# --- report ------------------------------------------------------------
echo
echo "lanyard-proxy vs HAProxy, $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $(uname -r)"
echo "  $("$PROXY" --version) ($LANYARD_PROXY_CORES tokio workers); $(haproxy -v | head -1 | cut -d' ' -f1-3), nbthread $HAPROXY_THREADS;"
echo "  $(nginx -v 2>&1 | sed 's/.*: //') (1 worker); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2)"
echo "  leaves: $LEAF_KIND from one anchor; TLS 1.3; lanyard B and haproxy B check the client identity per request"
echo "  load average before the runs: $LOAD_BEFORE (other work on the machine skews every setup alike only if it is steady)"
echo "  loads: c1 = wrk -t1 -c1, sat = wrk -t$SAT_THREADS -c$SAT_CONNS; $DURATION per run, $ROUNDS rounds interleaved"
echo "  (figures: mean over rounds; CPU/req = CPU of both proxies of the pair / requests)"
echo
awk -F'\t' -v tck="$CLK_TCK" \
    -v rest_la="${REST[LANYARD_A]}" -v rest_lb="${REST[LANYARD_B]}" \
    -v rest_ha="${REST[HAPROXY_A]}" -v rest_hb="${REST[HAPROXY_B]}" \
    -v after_la="${AFTER[LANYARD_A]}" -v after_lb="${AFTER[LANYARD_B]}" \
    -v after_ha="${AFTER[HAPROXY_A]}" -v after_hb="${AFTER[HAPROXY_B]}" \
    -v hwm_la="${HWM[LANYARD_A]}" -v hwm_lb="${HWM[LANYARD_B]}" \
    -v hwm_ha="${HWM[HAPROXY_A]}" -v hwm_hb="${HWM[HAPROXY_B]}" '
function mib(k) { return k / 1024 }
function ratio(a, b) { return (b > 0 && a >= 0) ? sprintf("%.2fx", a / b) : "n/a" }
{
    k = $2 SUBSEP $3
    n[k]++; rps[k] += $4; p50[k] += $5; p99[k] += $6; req[k] += $7; ng[k] += $8; bad[k] += $9
    cpu[k] += $10 + $12
    cpu_a[k] += $10; cs_a[k] += $11
    cpu_b[k] += $12; cs_b[k] += $13
    runs[$1, $2, $3] = sprintf("%10.0f %9.1f %9.1f", $4, $5, $6)
    r_rps[$1, $2, $3] = $4; r50[$1, $2, $3] = $5; r99[$1, $2, $3] = $6
    if ($1 > rounds) rounds = $1
}
END {
    split("c1 sat", loads, " "); split("direct lanyard haproxy", setups, " ")
    printf "%-5s %-8s %10s %9s %9s %9s %9s %12s %12s %6s\n", "load", "setup", "req/s", "p50 us", "p99 us", "+p50 us", "+p99 us", "pair CPU/req", "nginx CPU/rq", "errors"
    for (l = 1; l <= 2; l++) {
        L = loads[l]; d = L SUBSEP "direct"
        for (s = 1; s <= 3; s++) {
            S = setups[s]; k = L SUBSEP S
            m_rps[k] = rps[k] / n[k]; m50[k] = p50[k] / n[k]; m99[k] = p99[k] / n[k]
            add50[k] = m50[k] - p50[d] / n[d]; add99[k] = m99[k] - p99[d] / n[d]
            cpr[k] = cpu[k] / tck * 1e6 / req[k]
            printf "%-5s %-8s %10.0f %9.1f %9.1f %9s %9s %12s %12s %6d\n", L, S, m_rps[k], m50[k], m99[k],
                S == "direct" ? "-" : sprintf("%.1f", add50[k]), S == "direct" ? "-" : sprintf("%.1f", add99[k]),
                S == "direct" ? "-" : sprintf("%.1f us", cpr[k]), sprintf("%.1f us", ng[k] / tck * 1e6 / req[k]), bad[k]
        }
    }
    print ""
    print "each run (req/s, p50 us, p99 us):"
    for (r = 1; r <= rounds; r++)
        for (l = 1; l <= 2; l++)
            for (s = 1; s <= 3; s++)
                printf "  round %d %-4s %-8s %s\n", r, loads[l], setups[s], runs[r, loads[l], setups[s]]
    print ""
    print "per request, by proxy (CPU: utime+stime of all threads; context switches of all threads):"
    printf "%-5s %-36s %9s %12s\n", "load", "proxy", "CPU us", "ctx switches"
    split("lanyard-proxy A (outbound, L4 TLS)|lanyard-proxy B (inbound, HTTP/1)|haproxy A (mode tcp)|haproxy B (mode http)", names, "|")
    for (l = 1; l <= 2; l++) {
        L = loads[l]
        for (s = 2; s <= 3; s++) {
            k = L SUBSEP setups[s]; i = (s - 2) * 2
            printf "%-5s %-36s %9.1f %12.2f\n", L, names[i + 1], cpu_a[k] / tck * 1e6 / req[k], cs_a[k] / req[k]
            printf "%-5s %-36s %9.1f %12.2f\n", L, names[i + 2], cpu_b[k] / tck * 1e6 / req[k], cs_b[k] / req[k]
        }
    }
    print ""
    printf "%-16s %14s %14s %14s\n", "RSS (MiB)", "at rest", "after load", "peak (VmHWM)"
    printf "%-16s %14.1f %14.1f %14.1f\n", "lanyard-proxy A", mib(rest_la), mib(after_la), mib(hwm_la)
    printf "%-16s %14.1f %14.1f %14.1f\n", "lanyard-proxy B", mib(rest_lb), mib(after_lb), mib(hwm_lb)
    printf "%-16s %14.1f %14.1f %14.1f\n", "haproxy A", mib(rest_ha), mib(after_ha), mib(hwm_ha)
    printf "%-16s %14.1f %14.1f %14.1f\n", "haproxy B", mib(rest_hb), mib(after_hb), mib(hwm_hb)
    print ""
    print "lanyard / haproxy (throughput: above 1 is better; the rest: below 1 is better):"
    for (l = 1; l <= 2; l++) {
        L = loads[l]; a = L SUBSEP "lanyard"; h = L SUBSEP "haproxy"
        printf "  %-4s req/s %s   added p50 %s   added p99 %s   CPU/req %s (outbound %s, inbound %s)\n", L,
            ratio(m_rps[a], m_rps[h]), ratio(add50[a], add50[h]), ratio(add99[a], add99[h]), ratio(cpr[a], cpr[h]),
            ratio(cpu_a[a] / req[a], cpu_a[h] / req[h]), ratio(cpu_b[a] / req[a], cpu_b[h] / req[h])
    }
    printf "  RSS at rest %s, after load %s (sum of the pair)\n",
        ratio(rest_la + rest_lb, rest_ha + rest_hb), ratio(after_la + after_lb, after_ha + after_hb)
    print ""
    # Each goal on the means, and in how many rounds lanyard was ahead on
    # its own (the spread says how much the verdict is worth).
    print "goals (mean over the rounds; [rounds in which lanyard was ahead]):"
    less = 1; line = ""
    for (l = 1; l <= 2; l++) {
        L = loads[l]; a = L SUBSEP "lanyard"; h = L SUBSEP "haproxy"
        if (add50[a] >= add50[h] || add99[a] >= add99[h]) less = 0
        w50 = 0; w99 = 0
        for (r = 1; r <= rounds; r++) {
            if (r50[r, L, "lanyard"] < r50[r, L, "haproxy"]) w50++
            if (r99[r, L, "lanyard"] < r99[r, L, "haproxy"]) w99++
        }
        line = line sprintf("\n    %-4s added p50 %7.1f vs %7.1f us [%d/%d], added p99 %7.1f vs %7.1f us [%d/%d]",
            L, add50[a], add50[h], w50, rounds, add99[a], add99[h], w99, rounds)
    }
    printf "  less added latency than HAProxy (p50 and p99, both loads): %s%s\n", less ? "met" : "NOT met", line
    a = "sat" SUBSEP "lanyard"; h = "sat" SUBSEP "haproxy"; w = 0
    for (r = 1; r <= rounds; r++) if (r_rps[r, "sat", "lanyard"] >= r_rps[r, "sat", "haproxy"]) w++
    printf "  at least HAProxy'"'"'s throughput at saturation: %s\n    sat  %.0f vs %.0f req/s [%d/%d]\n",
        (m_rps[a] >= m_rps[h]) ? "met" : "NOT met", m_rps[a], m_rps[h], w, rounds
    w = 0
    for (r = 1; r <= rounds; r++) if (r_rps[r, "sat", "lanyard"] >= 1.1 * r_rps[r, "sat", "haproxy"]) w++
    printf "  1.1x the throughput of HAProxy at saturation: %s (%.2fx) [%d/%d]\n",
        (m_rps[a] >= 1.1 * m_rps[h]) ? "met" : "NOT met", m_rps[a] / m_rps[h], w, rounds
    cheap = 1; line = ""
    for (l = 1; l <= 2; l++) {
        L = loads[l]; a = L SUBSEP "lanyard"; h = L SUBSEP "haproxy"
        ro = (cpu_a[a] / req[a]) / (cpu_a[h] / req[h]); ri = (cpu_b[a] / req[a]) / (cpu_b[h] / req[h])
        if (ro > 0.85 || ri > 0.85) cheap = 0
        line = line sprintf("\n    %-4s outbound %.2fx, inbound %.2fx", L, ro, ri)
    }
    printf "  CPU per request at most 0.85x that of HAProxy, each proxy, both loads: %s%s\n", cheap ? "met" : "NOT met", line
    small = (mib(rest_la) < 20 && mib(rest_lb) < 20)
    printf "  under 20 MiB RSS per proxy at rest: %s\n    A %.1f MiB, B %.1f MiB\n", small ? "met" : "NOT met", mib(rest_la), mib(rest_lb)
}' "$RESULTS"
