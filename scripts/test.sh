#!/usr/bin/env bash
# Runs every test of token-agent: formatting, lints, unit, integration, end-to-end
# (a real oidc-provider from npm), crash-safety and volume tests.
# This is the README's test command; .ci/run calls it after installing what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every test that cannot run here (no root, no npm, no kubernetes-validate, no promtool) appends a line to
# this file; the list is printed at the end, so a skip never passes unnoticed. .ci/run sets
# TOKEN_AGENT_REQUIRE_* so that in CI nothing skips.
TOKEN_AGENT_SKIP_LOG="$(mktemp)"
export TOKEN_AGENT_SKIP_LOG
summary() {
  if [ -s "$TOKEN_AGENT_SKIP_LOG" ]; then
    echo "== skipped here ($(sort -u "$TOKEN_AGENT_SKIP_LOG" | wc -l)); CI runs them:"
    sort -u "$TOKEN_AGENT_SKIP_LOG" | sed 's/^/   /'
  else
    echo "== nothing was skipped"
  fi
  rm -f "$TOKEN_AGENT_SKIP_LOG"
}
trap summary EXIT

if command -v npm >/dev/null 2>&1 && [ ! -d tests/oidc/node_modules/oidc-provider ]; then
  echo "== installing the oidc-provider test server (tests/oidc)"
  (cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error)
fi

echo "== Kubernetes manifests against the official schemas (kubernetes-validate --strict)"
if command -v kubernetes-validate >/dev/null 2>&1; then
  kubernetes-validate --strict --quiet -k 1.33.0 deploy/rbac.yaml
elif [ -n "${TOKEN_AGENT_REQUIRE_MANIFESTS:-}" ]; then
  echo "kubernetes-validate is not installed (pip install kubernetes-validate)" >&2
  exit 1
else
  echo "manifests: kubernetes-validate is not installed: pip install kubernetes-validate" >>"$TOKEN_AGENT_SKIP_LOG"
fi

echo "== alert rules: PromQL syntax and unit tests (promtool)"
if command -v promtool >/dev/null 2>&1; then
  promtool check rules deploy/alerts.yaml >/dev/null
  promtool test rules deploy/alerts_test.yaml
elif [ -n "${TOKEN_AGENT_REQUIRE_PROMTOOL:-}" ]; then
  echo "promtool is not installed (apt install prometheus)" >&2
  exit 1
else
  echo "alert rules: promtool is not installed: apt install prometheus" >>"$TOKEN_AGENT_SKIP_LOG"
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked --lib --bins --tests
