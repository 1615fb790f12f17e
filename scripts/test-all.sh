#!/usr/bin/env bash
# Runs every AuthBridge test on a fresh Debian machine: installs what the tests need (apt, npm),
# builds the workspace once, runs unit + end-to-end tests, formatting and lint checks.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v iptables >/dev/null || need_apt+=(iptables)
command -v ip >/dev/null || need_apt+=(iproute2)
command -v setpriv >/dev/null || need_apt+=(util-linux)
command -v curl >/dev/null || need_apt+=(curl)
command -v python3 >/dev/null || need_apt+=(python3)
command -v node >/dev/null || need_apt+=(nodejs npm)
if ((${#need_apt[@]})); then
  if [[ $(id -u) == 0 ]]; then
    echo "==> apt-get install ${need_apt[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    echo "warning: missing ${need_apt[*]} (not root, cannot install); tests needing them will skip" >&2
  fi
fi

echo "==> npm ci (test STS: oidc-provider)"
npm ci --prefix tests/sts --no-audit --no-fund --loglevel=error

echo "==> node smoke test of the STS"
node tests/sts/smoke.mjs

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> build (one build of the workspace and its tests)"
cargo build --workspace --all-targets --locked

echo "==> cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> cargo test"
cargo test --workspace --locked

echo "==> deploy manifests (kubernetes-validate --strict), Dockerfile (hadolint), shipped config (authbridge check)"
./scripts/lint-deploy.sh
