#!/usr/bin/env bash
# Scale harness for `lanyard controller` against a real kube-apiserver (run by hand, not in CI).
#
# What it does, for N Certificates (first argument, default 5000) spread over the 20 namespaces
# scale-00..scale-19:
#   1. cleans up earlier runs (the Certificates and Secrets in those namespaces, the controller's
#      Lease; namespaces are never deleted), applies the CRDs (`$LANYARD_BIN crds`, else
#      crds/lanyard.dev.yaml), makes a self-signed EC P-256 CA with openssl, stores it as the
#      kubernetes.io/tls Secret `scale-ca` in namespace `lanyard`, and makes ClusterIssuer `scale-ca`;
#   2. creates the N Certificates (ClusterIssuer scale-ca, one Secret each) before the controller
#      starts, with `kubectl create -f` on 500-object YAML files, 4 at a time (timed, not measured);
#   3. snapshots the API server's request counters (apiserver_request_total by verb, resource and
#      code class; watch health) and the CPU time of kube-apiserver, etcd and the whole machine;
#   4. cold start: starts `$LANYARD_BIN controller` (leader election on, as deployed), samples its
#      sockets, VmRSS, VmHWM and CPU every 0.5 s, and polls readiness (one consistent LIST of
#      Certificates as a server-side Table, through one `kubectl proxy`, 2 s after the previous poll
#      ended) until all N are Ready=True, then samples 10 s more ("settled"); progress every 30 s;
#   5. prints: time to all Ready, Certificates/s, API requests by verb and resource (the harness's
#      own polls subtracted), requests per Certificate, peak and settled sockets, peak VmHWM, final
#      VmRSS, controller CPU, kube-apiserver, etcd and other processes' CPU, watchers the API server
#      closed as unresponsive, `issued a certificate` and WARN/ERROR log lines;
#   6. restart: SIGTERM (exit time measured), starts it again on the same objects, observes it for
#      RESTART_WINDOW seconds (default 30) and then until it settles (under 10% of a core for 5 s, at
#      most RESTART_MAX seconds), and prints the same figures;
#   7. with --delete-secrets [K] (K default 100): while the restarted controller runs, deletes the
#      Secrets of K Certificates, waits until they are back and their Certificates Ready with a new
#      status.revision, and prints how long that took and on how many the revision rose by exactly 1;
#      then SIGTERM;
#   8. writes everything as tables to $OUT (default /tmp/lanyard-scale-N.txt); the raw samples,
#      snapshots and controller logs stay in $WORKDIR (default /tmp/lanyard-scale-N.d).
#
# The API server: on this kind of machine, ../shared/tools/kube-apiserver/start.sh starts etcd and a
# kube-apiserver (fresh etcd data on each start: a clean slate for a big run) and writes
# /tmp/kube/admin.kubeconfig; `start.sh stop` stops them. The request counters count every client,
# so use an API server nothing else is using meanwhile (no live tests, no other controller).
# kube-apiserver's and etcd's CPU are read from $KUBE_RUN_DIR/{kube-apiserver,etcd}.pid (default
# /tmp/kube/run) when those exist; otherwise they are reported as n/a. The machine's other work
# shows as "other processes" CPU: figures from a busy machine are not comparable with a quiet one.
#
# Environment:
#   LANYARD_TEST_KUBECONFIG  (required) kubeconfig of the test cluster, used by kubectl and by the controller
#   KUBECTL                  kubectl to use (default: $LANYARD_TEST_KUBECTL, else kubectl on PATH)
#   LANYARD_BIN              the lanyard binary measured (default: target/release/lanyard)
#   OUT                      results file (default: /tmp/lanyard-scale-N.txt)
#   WORKDIR                  logs and raw JSON (default: /tmp/lanyard-scale-N.d; emptied first)
#   TIMEOUT                  seconds to wait for all Ready at cold start (default 1200); when it
#                            passes, the restart is still measured and the script exits 1 at the end
#   RESTART_WINDOW           seconds to observe the restarted controller at least (default 30); it is
#                            then observed until it settles (under 10% of a core for 5 s)
#   RESTART_MAX              ... but at most this many seconds (default 900)
#   POLL_INTERVAL            seconds from the end of one readiness poll to the next (default 2; 5 above N=5000)
#   LANYARD_CONTROLLER_ARGS  extra arguments for `lanyard controller` (e.g. --no-leader-elect)
#
# Examples:
#   bash /work/shared/tools/kube-apiserver/start.sh
#   LANYARD_TEST_KUBECONFIG=/tmp/kube/admin.kubeconfig bash rotator/benches/scale.sh 5000
#   LANYARD_TEST_KUBECONFIG=/tmp/kube/admin.kubeconfig KUBECTL=/tmp/kube/bin/kubectl \
#     LANYARD_BIN=/work/lanyard-before bash rotator/benches/scale.sh 5000 --delete-secrets 100
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PY="python3 $HERE/scale/harness.py"

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "scale.sh: error: $*" >&2; exit 1; }
say() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b - a}'; }

N=5000
DELETE_K=
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --delete-secrets)
      if [ $# -gt 1 ] && [[ "$2" =~ ^[0-9]+$ ]]; then DELETE_K=$2; shift; else DELETE_K=100; fi ;;
    --delete-secrets=*) DELETE_K=${1#*=} ;;
    [0-9]*) [[ "$1" =~ ^[0-9]+$ ]] || die "N must be a number, not '$1'"; N=$1 ;;
    *) die "unknown argument '$1' (usage: scale.sh [N] [--delete-secrets [K]])" ;;
  esac
  shift
done
[ "$N" -ge 1 ] || die "N must be at least 1"

[ -n "${LANYARD_TEST_KUBECONFIG:-}" ] || die "LANYARD_TEST_KUBECONFIG is not set: point it at the test cluster's kubeconfig
  (e.g. start one with: bash /work/shared/tools/kube-apiserver/start.sh, then
   LANYARD_TEST_KUBECONFIG=/tmp/kube/admin.kubeconfig bash rotator/benches/scale.sh $N)"
[ -r "$LANYARD_TEST_KUBECONFIG" ] || die "LANYARD_TEST_KUBECONFIG=$LANYARD_TEST_KUBECONFIG is not a readable file"
export KUBECONFIG=$LANYARD_TEST_KUBECONFIG
KUBECTL=${KUBECTL:-${LANYARD_TEST_KUBECTL:-$(command -v kubectl || true)}}
[ -n "$KUBECTL" ] && [ -x "$KUBECTL" ] || die "no kubectl: set KUBECTL (or LANYARD_TEST_KUBECTL), or put kubectl on PATH"
LANYARD_BIN=${LANYARD_BIN:-target/release/lanyard}
[ -x "$LANYARD_BIN" ] || die "no lanyard binary at '$LANYARD_BIN': build it (cargo build --release --bin lanyard) or set LANYARD_BIN"
LANYARD_BIN=$(realpath "$LANYARD_BIN")
command -v python3 >/dev/null || die "python3 is needed (standard library only)"
command -v openssl >/dev/null || die "openssl is needed to make the CA"

OUT=${OUT:-/tmp/lanyard-scale-$N.txt}
WORKDIR=${WORKDIR:-/tmp/lanyard-scale-$N.d}
TIMEOUT=${TIMEOUT:-1200}
RESTART_WINDOW=${RESTART_WINDOW:-30}
RESTART_MAX=${RESTART_MAX:-900}
POLL_INTERVAL=${POLL_INTERVAL:-$([ "$N" -gt 5000 ] && echo 5 || echo 2)}
KUBE_RUN_DIR=${KUBE_RUN_DIR:-/tmp/kube/run}
NS_CTRL=lanyard
NAMESPACES=$(for i in $(seq 0 19); do printf 'scale-%02d ' "$i"; done)
k() { "$KUBECTL" "$@"; }

CTRL_PID= PROXY_PID= WATCH_PID=
cleanup() {
  local rc=$?
  # Ignore further signals (SIGPIPE from a closed stdout included) while the controller is stopped.
  trap '' PIPE INT TERM HUP
  if [ -n "$WATCH_PID" ]; then kill "$WATCH_PID" 2>/dev/null || true; fi
  if [ -n "$CTRL_PID" ] && kill -0 "$CTRL_PID" 2>/dev/null; then
    kill -TERM "$CTRL_PID" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$CTRL_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$CTRL_PID" 2>/dev/null || true
    say "stopped the controller (pid $CTRL_PID)" || true
  fi
  if [ -n "$PROXY_PID" ]; then kill "$PROXY_PID" 2>/dev/null || true; fi
  exit $rc
}
trap cleanup EXIT
trap 'say "SIGHUP: stopping" || true; exit 129' HUP
trap 'say "SIGINT: stopping" || true; exit 130' INT
trap 'exit 141' PIPE
trap 'say "SIGTERM: stopping" || true; exit 143' TERM

pidfile() { local p; p=$(cat "$KUBE_RUN_DIR/$1.pid" 2>/dev/null || true); [ -n "$p" ] && [ -d "/proc/$p" ] && echo "$p" || true; }
APISERVER_PID=$(pidfile kube-apiserver)
ETCD_PID=$(pidfile etcd)

rm -rf "$WORKDIR"
mkdir -p "$WORKDIR/cold" "$WORKDIR/restart" "$WORKDIR/yaml" "$WORKDIR/ca"

# The harness's own API requests go through one kubectl proxy on a Unix socket (no kubectl start-up
# per poll, exactly one API request per poll).
PROXY=$WORKDIR/kubectl-proxy.sock
"$KUBECTL" proxy --unix-socket="$PROXY" > "$WORKDIR/kubectl-proxy.log" 2>&1 &
PROXY_PID=$!
for _ in $(seq 100); do [ -S "$PROXY" ] && break; kill -0 "$PROXY_PID" 2>/dev/null || break; sleep 0.1; done
[ -S "$PROXY" ] || die "kubectl proxy did not start: $(cat "$WORKDIR/kubectl-proxy.log")"
k version -o json > "$WORKDIR/version.json" 2>/dev/null || die "cannot reach the API server with $LANYARD_TEST_KUBECONFIG (kubectl version failed)"
SERVER_VERSION=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["serverVersion"]["gitVersion"])' "$WORKDIR/version.json")
say "API server $SERVER_VERSION; kube-apiserver pid ${APISERVER_PID:-unknown}, etcd pid ${ETCD_PID:-unknown}"
say "binary $LANYARD_BIN ($("$LANYARD_BIN" --version 2>/dev/null || echo '?')); N=$N; results in $OUT, raw data in $WORKDIR"

# ---------------------------------------------------------------- 1. clean up, CRDs, CA, issuer
say "cleaning up earlier runs"
$PY clean --proxy "$PROXY" --controller-namespace "$NS_CTRL"

say "applying the CRDs"
if "$LANYARD_BIN" crds > "$WORKDIR/crds.yaml" 2>/dev/null && [ -s "$WORKDIR/crds.yaml" ]; then
  CRDS=$WORKDIR/crds.yaml
else
  CRDS=$REPO/crds/lanyard.dev.yaml
fi
k apply --server-side --force-conflicts -f "$CRDS" >/dev/null
k wait --for=condition=Established --timeout=60s \
  crd/certificates.lanyard.dev crd/issuers.lanyard.dev crd/clusterissuers.lanyard.dev >/dev/null

{
  for ns in $NS_CTRL $NAMESPACES; do printf -- '---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n' "$ns"; done
} | k apply -f - >/dev/null

say "making the CA (EC P-256, CA:TRUE) as Secret $NS_CTRL/scale-ca and ClusterIssuer scale-ca"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$WORKDIR/ca/tls.key" 2>/dev/null
openssl req -x509 -new -key "$WORKDIR/ca/tls.key" -out "$WORKDIR/ca/tls.crt" -days 3650 -sha256 \
  -subj "/O=lanyard scale harness/CN=scale-ca" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "subjectKeyIdentifier=hash" 2>/dev/null
k create secret tls scale-ca -n "$NS_CTRL" --cert="$WORKDIR/ca/tls.crt" --key="$WORKDIR/ca/tls.key" >/dev/null
printf 'apiVersion: lanyard.dev/v1\nkind: ClusterIssuer\nmetadata:\n  name: scale-ca\nspec:\n  ca:\n    secretName: scale-ca\n' \
  | k apply -f - >/dev/null

# ---------------------------------------------------------------- 2. the Certificates
$PY gen --n "$N" --chunk 500 --outdir "$WORKDIR/yaml" >/dev/null
say "creating $N Certificates"
T_CREATE=$(now)
ls "$WORKDIR"/yaml/certs-*.yaml | xargs -P 4 -I{} "$KUBECTL" create -f {} -o name > "$WORKDIR/create.log" 2>&1 \
  || { tail -5 "$WORKDIR/create.log" >&2; die "creating the Certificates failed (see $WORKDIR/create.log)"; }
CREATE_S=$(elapsed "$T_CREATE" "$(now)")
count=$($PY ready --proxy "$PROXY")
total=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["total"])' "$count")
[ "$total" -eq "$N" ] || die "expected $N Certificates after creating them, found $total"
say "created $N Certificates in $CREATE_S s"

python3 - "$WORKDIR/meta.json" <<EOF
import json, os, sys
json.dump({
  "n": $N,
  "started": "$(date -u '+%Y-%m-%d %H:%M:%S UTC')",
  "binary": "$LANYARD_BIN",
  "binary_sha256": "$(sha256sum "$LANYARD_BIN" | cut -c1-16)",
  "version": "$("$LANYARD_BIN" --version 2>/dev/null || true)",
  "kubeconfig": "$LANYARD_TEST_KUBECONFIG",
  "server_version": "$SERVER_VERSION",
  "host": "$(nproc) CPUs, load average at start $(cut -d' ' -f1-3 /proc/loadavg), $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) RAM",
  "create_s": $CREATE_S,
  "controller_args": "controller --metrics-addr 127.0.0.1:0 ${LANYARD_CONTROLLER_ARGS:-}",
}, open(sys.argv[1], "w"), indent=1)
EOF

# ---------------------------------------------------------------- controller start/stop
start_controller() { # $1 = phase directory; writes "PID T0" to $1/pid for the watcher
  local dir=$1 t0
  for _ in $(seq 600); do [ -e "$dir/pid.waiting" ] && break; sleep 0.05; done
  [ -e "$dir/pid.waiting" ] || die "the sampler did not start"
  t0=$(now)
  # shellcheck disable=SC2086
  "$LANYARD_BIN" controller --metrics-addr 127.0.0.1:0 ${LANYARD_CONTROLLER_ARGS:-} > "$dir/controller.log" 2>&1 &
  CTRL_PID=$!
  echo "$CTRL_PID $t0" > "$dir/pid.tmp" && mv "$dir/pid.tmp" "$dir/pid"
  say "controller started (pid $CTRL_PID), log $dir/controller.log"
}

EXIT_S= EXIT_CODE=
stop_controller() {
  local t code=0
  t=$(now)
  kill -TERM "$CTRL_PID" 2>/dev/null || true
  for _ in $(seq 600); do kill -0 "$CTRL_PID" 2>/dev/null || break; sleep 0.05; done
  if kill -0 "$CTRL_PID" 2>/dev/null; then
    say "the controller did not exit 30 s after SIGTERM; killing it"
    kill -KILL "$CTRL_PID" 2>/dev/null || true
  fi
  wait "$CTRL_PID" || code=$?
  EXIT_S=$(elapsed "$t" "$(now)")
  EXIT_CODE=$code
  CTRL_PID=
  say "controller exited with status $EXIT_CODE, $EXIT_S s after SIGTERM"
}

snap() { # $1 = output file
  $PY snap --proxy "$PROXY" --out "$1" --apiserver-pid "$APISERVER_PID" --etcd-pid "$ETCD_PID" \
    ${CTRL_PID:+--controller-pid "$CTRL_PID"}
}

log_counts() { # $1 = log file -> "issued warn"
  local issued warn
  issued=$(grep -c 'issued a certificate' "$1" || true)
  warn=$(grep -Ec ' (WARN|ERROR) ' "$1" || true)
  echo "$issued $warn"
}

ready_now() { $PY ready --proxy "$PROXY" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ready"])'; }

write_extra() { # $1 = dir, issued, warn, exit_s, exit_code, ready_after (the log is $1/controller.log)
  python3 - "$1" "$2" "$3" "$4" "$5" "$6" <<'EOF'
import datetime, json, sys
d, issued, warn, exit_s, code, ready = sys.argv[1:]
num = lambda s: None if s in ("", "None") else (float(s) if "." in s else int(s))
# The timestamp of the last of the first `issued` "issued a certificate" lines (later ones are
# the delete-secrets phase's).
last, seen = None, 0
with open(d + "/controller.log", errors="replace") as f:
    for line in f:
        if "issued a certificate" in line and seen < (num(issued) or 0):
            seen += 1
            try:
                last = datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
            except ValueError:
                pass
json.dump({"issued_lines": num(issued), "warn_lines": num(warn), "exit_s": num(exit_s),
           "exit_code": num(code), "ready_after": num(ready), "last_issued_epoch": last},
          open(d + "/extra.json", "w"))
EOF
}

# ---------------------------------------------------------------- 3-5. cold start
snap "$WORKDIR/cold/snap-before.json"
# The watcher starts first and waits for the controller's PID, so sampling starts with it.
$PY watch --pid-file "$WORKDIR/cold/pid" --n "$N" --proxy "$PROXY" --poll "$POLL_INTERVAL" \
  --timeout "$TIMEOUT" --settle 10 --out "$WORKDIR/cold/watch.json" &
WATCH_PID=$!
start_controller "$WORKDIR/cold"
say "waiting until all $N Certificates are Ready (timeout ${TIMEOUT}s)"
COLD_TIMEOUT=
WATCH_RC=0
wait "$WATCH_PID" || WATCH_RC=$?
WATCH_PID=
if [ "$WATCH_RC" -eq 3 ]; then
  # Timed out: measure the rest all the same (the restarted controller carries on the work), and
  # exit with an error at the end.
  COLD_TIMEOUT=1
  say "error: not all $N Certificates were Ready after ${TIMEOUT}s; measuring the restart all the same"
elif [ "$WATCH_RC" -ne 0 ]; then
  snap "$WORKDIR/cold/snap-after.json" || true
  write_extra "$WORKDIR/cold" $(log_counts "$WORKDIR/cold/controller.log") "" "" ""
  $PY report --dir "$WORKDIR" --out "$OUT" || true
  tail -5 "$WORKDIR/cold/controller.log" >&2 || true
  die "sampling the controller failed or it exited (see $WORKDIR/cold/controller.log); partial figures in $OUT"
fi
snap "$WORKDIR/cold/snap-after.json"
[ -n "$COLD_TIMEOUT" ] || say "all Ready; stopping the controller"
stop_controller
read -r ISSUED WARN < <(log_counts "$WORKDIR/cold/controller.log")
write_extra "$WORKDIR/cold" "$ISSUED" "$WARN" "$EXIT_S" "$EXIT_CODE" "$([ -n "$COLD_TIMEOUT" ] || echo "$N")"

# ---------------------------------------------------------------- 6. restart
snap "$WORKDIR/restart/snap-before.json"
$PY watch --pid-file "$WORKDIR/restart/pid" --n "$N" --proxy "$PROXY" --window "$RESTART_WINDOW" \
  --window-max "$RESTART_MAX" \
  --out "$WORKDIR/restart/watch.json" &
WATCH_PID=$!
start_controller "$WORKDIR/restart"
say "observing the restarted controller for ${RESTART_WINDOW}s, then until it settles (at most ${RESTART_MAX}s)"
wait "$WATCH_PID" || die "sampling the restarted controller failed"
WATCH_PID=
snap "$WORKDIR/restart/snap-after.json"
READY_AFTER=$(ready_now)
[ "$READY_AFTER" -eq "$N" ] || say "warning: only $READY_AFTER of $N Ready after the restart window"
read -r ISSUED WARN < <(log_counts "$WORKDIR/restart/controller.log")

# ---------------------------------------------------------------- 7. delete-secrets
if [ -n "$DELETE_K" ]; then
  say "deleting the Secrets of $DELETE_K Certificates and waiting for them to be re-issued"
  snap "$WORKDIR/ds-before.json"
  $PY delete-secrets --k "$DELETE_K" --n "$N" --proxy "$PROXY" --out "$WORKDIR/delete-secrets.json"
  snap "$WORKDIR/ds-after.json"
  $PY delta --before "$WORKDIR/ds-before.json" --after "$WORKDIR/ds-after.json" \
    --harness "$WORKDIR/delete-secrets.json" --out "$WORKDIR/delete-secrets-requests.json"
  read -r ISSUED2 _ < <(log_counts "$WORKDIR/restart/controller.log")
  echo "$((ISSUED2 - ISSUED))" > "$WORKDIR/delete-secrets-issued.txt"
fi

stop_controller
write_extra "$WORKDIR/restart" "$ISSUED" "$WARN" "$EXIT_S" "$EXIT_CODE" "$READY_AFTER"

# ---------------------------------------------------------------- 8. report
echo
$PY report --dir "$WORKDIR" --out "$OUT"
echo
say "results written to $OUT (raw samples, snapshots and logs in $WORKDIR)"
[ -z "$COLD_TIMEOUT" ] || die "not all $N Certificates were Ready within ${TIMEOUT}s of the cold start"
