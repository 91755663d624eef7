#!/usr/bin/env bash
# Debian's docker-compose (1.29) for the compose stack test; the engine comes from docker.sh.
set -euo pipefail
if ! command -v docker-compose >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || true
  apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
fi
docker-compose version --short
