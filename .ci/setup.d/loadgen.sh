#!/usr/bin/env bash
# h2load (Debian's nghttp2-client) for tests/bench and tests/inference_worker/test_grpc_server.py: the
# load generator bench/ drives every server and protocol with, read the way the benchmarks read it.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

if command -v h2load >/dev/null 2>&1; then
  exit 0
fi
apt-get update -qq || true
apt-get install -y -qq --no-install-recommends nghttp2-client >/dev/null
h2load --version | head -1
