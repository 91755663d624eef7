#!/usr/bin/env bash
# promtool for tests/stack/test_prometheus_config.py: Debian's `prometheus` package, without its service.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

if command -v promtool >/dev/null 2>&1; then
  exit 0
fi

# The package's maintainer scripts start a Prometheus server on :9090 through invoke-rc.d; a
# policy-rc.d that answers 101 ("action forbidden") keeps it from starting. Ours is removed
# afterwards unless one was there already.
policy=/usr/sbin/policy-rc.d
ours=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  ours=1
fi
trap '[[ $ours == 1 ]] && rm -f "$policy"' EXIT

apt-get update -qq || true
apt-get install -y -qq --no-install-recommends prometheus >/dev/null

# Belt and braces: where an init system started it anyway, stop it (tests never need the server).
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl stop prometheus || true
  systemctl disable prometheus >/dev/null 2>&1 || true
fi
promtool --version | head -1
