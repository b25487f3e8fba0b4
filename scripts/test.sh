#!/usr/bin/env bash
# Runs every test of token-agent: formatting, lints, unit, integration, end-to-end
# (a real oidc-provider from npm), crash-safety and volume tests.
# This is the README's test command; .ci/run calls it after installing what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

# Every test that cannot run here (no root, no npm, no Docker, no Helm SDK, no kubernetes-validate, no promtool) appends a line to
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

echo "== container image (scripts/image.sh: static musl build, docker build FROM scratch)"
# tests/image.rs runs it with a real Docker engine; without one those tests skip (and are listed).
if docker info >/dev/null 2>&1 && command -v musl-gcc >/dev/null 2>&1 \
  && rustup target list --installed 2>/dev/null | grep -qx x86_64-unknown-linux-musl; then
  TOKEN_AGENT_IMAGE=$(./scripts/image.sh token-agent:test)
  export TOKEN_AGENT_IMAGE
elif [ -n "${TOKEN_AGENT_REQUIRE_IMAGE:-}" ]; then
  echo "no Docker daemon, musl-gcc or musl target: cannot build the image" >&2
  exit 1
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

echo "== Helm chart and manifests (helm-python-sdk, kubernetes-validate --strict 1.29 and 1.33, token-agent validate)"
if command -v python3 >/dev/null 2>&1; then
  python3 -m unittest discover -s tests/chart
elif [ -n "${TOKEN_AGENT_REQUIRE_CHART:-}" ]; then
  echo "python3 is not installed" >&2
  exit 1
else
  echo "chart tests: python3 is not installed" >>"$TOKEN_AGENT_SKIP_LOG"
fi
