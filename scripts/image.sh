#!/usr/bin/env bash
# Builds the token-agent image: the static musl binary (release profile), then `docker build`
# of the root Dockerfile on scratch. Nothing is pulled from a registry.
#
#   scripts/image.sh [TAG]        # default token-agent:<version from Cargo.toml>
#
# Needs: rustup target x86_64-unknown-linux-musl, Debian's musl-tools (ring's C code),
# ca-certificates, and a running Docker daemon (docker.io). Prints the image reference.
set -euo pipefail
cd "$(dirname "$0")/.."

target=x86_64-unknown-linux-musl
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
tag=${1:-token-agent:$version}
bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}

[ -s "$bundle" ] || { echo "no CA bundle at $bundle (apt install ca-certificates, or set CA_BUNDLE)" >&2; exit 1; }
cargo build --locked --release --target "$target" --bin token-agent >&2

context=target/image
rm -rf "$context"
mkdir -p "$context"
cp "target/$target/release/token-agent" "$context/token-agent"
cp "$bundle" "$context/ca-certificates.crt"
chmod 0555 "$context/token-agent"
chmod 0444 "$context/ca-certificates.crt"

revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
source_url=$(git remote get-url origin 2>/dev/null || echo unknown)
DOCKER_BUILDKIT=0 docker build --quiet -f Dockerfile \
  --build-arg "VERSION=$version" --build-arg "REVISION=$revision" --build-arg "SOURCE=$source_url" \
  -t "$tag" "$context" >&2
echo "$tag"
