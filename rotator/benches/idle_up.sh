#!/usr/bin/env bash
# The cost of an idle `lanyard up`: starts it on a fresh state directory,
# applies N Certificates (default 500), waits until all are issued, then
# reads the process's CPU time (/proc/PID/stat utime+stime) and its pass
# counter over WINDOW seconds (default 30) with nothing due.
# Usage: bash rotator/benches/idle_up.sh [path/to/lanyard] [N] [WINDOW]
set -euo pipefail
BIN=${1:-target/release/lanyard}
N=${2:-500}
WINDOW=${3:-30}
BIN=$(realpath "$BIN")
DIR=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
cd "$DIR"
"$BIN" up --state-dir state --metrics-addr 127.0.0.1:0 --identity-addr 127.0.0.1:0 2> up.log &
PID=$!
for _ in $(seq 100); do grep -q "metrics on http://" up.log && break; sleep 0.1; done
METRICS=$(sed -n 's|.*metrics on http://\([0-9.:]*\)/metrics.*|\1|p' up.log | head -1)
for i in $(seq 0 $((N - 1))); do
  printf -- '---\napiVersion: lanyard.dev/v1\nkind: Certificate\nmetadata:\n  name: w%s\n  namespace: work\nspec:\n  secretName: w%s-tls\n  dnsNames: [w%s.work.svc.cluster.local]\n  duration: 24h\n  issuerRef:\n    name: linkerd-trust-anchor\n    kind: ClusterIssuer\n' "$i" "$i" "$i"
done > work.yaml
"$BIN" apply --state-dir state -f work.yaml > /dev/null
issued() { curl -s "http://$METRICS/metrics" | awk '/^lanyard_certificate_issued_total/ {s+=$2} END {print s+0}'; }
passes() { curl -s "http://$METRICS/metrics" | awk '/^lanyard_controller_passes_total/ {s+=$2} END {print s+0}'; }
for _ in $(seq 600); do [ "$(issued)" -ge $((N + 1)) ] && break; sleep 0.5; done
sleep 2
ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
HZ=$(getconf CLK_TCK)
T0=$(ticks); P0=$(passes)
sleep "$WINDOW"
T1=$(ticks); P1=$(passes)
CPU=$(awk -v t=$((T1 - T0)) -v hz="$HZ" -v w="$WINDOW" 'BEGIN {printf "%.2f", 100 * t / hz / w}')
echo "idle up, $N Certificates, ${WINDOW}s: CPU ${CPU}% of a core ($((T1 - T0)) ticks), passes counted: ${P0} -> ${P1}"
