#!/usr/bin/env bash
# RFC 9111 behaviours side by side: fanz-node at its default settings, nginx
# proxy_cache and Varnish, the same exchanges against the same scripted origin; prints
# a Markdown table of which behaviours each gets right (bench/peers/conformance.py).
#
# Usage: bench/peers/conformance.sh [FANZ_NODE_BINARY]
# Needs nginx and varnish (Debian packages; installed if missing) and python3.
# Everything listens on 127.0.0.1 and is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v nginx >/dev/null || ! command -v varnishd >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light varnish >/dev/null
fi
bin=${1:-target/release/fanz-node}
[ -n "${1:-}" ] || cargo build --release -q -p fanz-node
exec python3 bench/peers/conformance.py "$bin"
