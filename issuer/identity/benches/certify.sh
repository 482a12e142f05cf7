#!/usr/bin/env bash
# The identity service's Certify beside cfssl serve, in one run.
# Installs the peer (Debian's golang-cfssl) when `cfssl` is missing, then
# runs the bench. Without root and without cfssl, the bench still runs and
# says that the peer was skipped.
#
# To profile the service alone at 16 clients, for example:
#   CERTIFY_PROFILE=plaintext:10 issuer/identity/benches/certify.sh &
#   perf record -g --call-graph dwarf -p <the pid it prints> -- sleep 8
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v cfssl >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    if ! { $SUDO apt-get update && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y golang-cfssl; }; then
        echo "certify.sh: could not install golang-cfssl; the bench will skip the peer" >&2
    fi
fi

exec cargo bench -p lanyard-identity --bench certify "$@"
