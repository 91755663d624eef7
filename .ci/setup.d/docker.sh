#!/usr/bin/env bash
# A Docker engine and a local Python base image for the docker-marked tests (and for developers).
#
#   bash .ci/setup.d/docker.sh
#
# - installs docker.io and debootstrap when missing (Debian; needs root),
# - starts dockerd when no engine answers (unless DOCKER_HOST names another engine):
#   no iptables, no default bridge, overlay2; containers use host networking; log in $KILN_DOCKERD_LOG,
# - builds the Python base image $KILN_DOCKER_BASE_IMAGE once with debootstrap (no image can be
#   pulled on our machines); a later run finds it and does nothing.
# Safe to run again at any time.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

BASE_IMAGE=${KILN_DOCKER_BASE_IMAGE:-kiln/python-base:bookworm}
SUITE=${KILN_DEBOOTSTRAP_SUITE:-bookworm}
MIRROR=${KILN_DEBOOTSTRAP_MIRROR:-http://deb.debian.org/debian}
DOCKERD_LOG=${KILN_DOCKERD_LOG:-/var/log/kiln-dockerd.log}

log() { printf '== docker setup: %s\n' "$*"; }

engine_answers() { docker info >/dev/null 2>&1; }

install_missing() {
  local missing=() pkg
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -ne 0 ]]; then
    log "missing ${missing[*]}; install them as root (apt-get install ${missing[*]})" >&2
    return 1
  fi
  log "apt-get install ${missing[*]}"
  apt-get update -qq || true
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start_engine() {
  if engine_answers; then
    return 0
  fi
  if [[ -n ${DOCKER_HOST:-} && ${DOCKER_HOST} != unix:///var/run/docker.sock ]]; then
    log "DOCKER_HOST=${DOCKER_HOST} does not answer; not starting a local engine in its place" >&2
    return 1
  fi
  log "starting dockerd (log: ${DOCKERD_LOG})"
  mkdir -p "$(dirname "$DOCKERD_LOG")"
  # Detached from this shell, so the engine outlives the CI step (and a developer's terminal).
  setsid nohup dockerd --iptables=false --bridge=none --storage-driver=overlay2 \
    >>"$DOCKERD_LOG" 2>&1 </dev/null &
  for _ in $(seq 1 60); do
    engine_answers && return 0
    sleep 1
  done
  log "dockerd did not answer within 60 s; last lines of ${DOCKERD_LOG}:" >&2
  tail -n 20 "$DOCKERD_LOG" >&2 || true
  return 1
}

build_base_image() {
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "base image ${BASE_IMAGE} exists"
    return 0
  fi
  local root status=0
  root=$(mktemp -d /var/tmp/kiln-base.XXXXXX)
  bootstrap_and_import "$root" || status=$?
  rm -rf "$root" "$root.log"
  return "$status"
}

bootstrap_and_import() {
  local root=$1
  log "debootstrap ${SUITE} into ${root} (about a minute)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
    "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 || { tail -n 30 "$root.log" >&2; return 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/locale/*
  log "importing it as ${BASE_IMAGE}"
  tar -C "$root" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/usr/bin/python3"]' \
    --message "debootstrap ${SUITE} minbase + python3 (kiln .ci/setup.d/docker.sh)" \
    - "$BASE_IMAGE" >/dev/null || return 1
  docker run --rm --network none "$BASE_IMAGE" python3 -c 'import sys, venv; print("python", sys.version.split()[0])'
}

install_missing docker.io debootstrap
start_engine
build_base_image
log "engine $(docker version --format '{{.Server.Version}}') ready; base image ${BASE_IMAGE}"
