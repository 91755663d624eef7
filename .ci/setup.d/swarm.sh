#!/usr/bin/env bash
# What the swarm-marked tests need (and developers who try the swarm backend on one machine).
#
#   bash .ci/setup.d/swarm.sh
#
# - installs Debian's docker-registry (the Registry v2 API) when missing; docker.io and the base
#   image come from docker.sh, which runs first;
# - starts nothing that outlives it: the tests' fixture (tests/support/swarm_cluster.py) starts two
#   dockerd of its own under a temporary directory, makes them a two-node swarm on loopback ports,
#   serves a registry there and removes it all at the end. The machine's own engine is never made
#   a swarm member (the docker suite uses it); the Debian package's registry service is not started.
# - checks that this machine can run a second dockerd (root, overlay2) and says why not.
# Safe to run again at any time.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

log() { printf '== swarm setup: %s\n' "$*"; }

if ! dpkg -s docker-registry >/dev/null 2>&1; then
  if [[ $(id -u) -ne 0 ]]; then
    log "docker-registry is missing; install it as root (apt-get install docker-registry)" >&2
    exit 1
  fi
  log "apt-get install docker-registry"
  apt-get update -qq || true
  # policy-rc.d keeps the package's own service from starting (no init system here anyway).
  apt-get install -y -qq --no-install-recommends docker-registry >/dev/null
fi

if [[ $(id -u) -ne 0 ]]; then
  log "the swarm tests start their own dockerd and need root; they will skip" >&2
elif ! command -v dockerd >/dev/null; then
  log "dockerd is missing (bash .ci/setup.d/docker.sh installs docker.io); the swarm tests will skip" >&2
elif ! grep -qw overlay /proc/filesystems; then
  log "this kernel has no overlay filesystem; the swarm tests will fail to start their engines" >&2
fi
log "docker-registry $(docker-registry --version 2>/dev/null | awk '{print $NF}') ready; run: pytest -m swarm"
