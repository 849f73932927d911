#!/usr/bin/env bash
# Debian packages the tests and the demo use, installed only when missing (idempotent):
# real peers (nginx, haproxy), clients (curl, openssl), load tools (iperf3, wrk), then the
# network-namespace harness's own list (yggdrasil 0.5 from bookworm-backports, nftables, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=()
for pair in curl:curl openssl:openssl nginx:nginx-light haproxy:haproxy iperf3:iperf3 wrk:wrk; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
# Build dependencies of the nftables netlink crates (nftnl-sys, mnl-sys link these).
# knot: the authoritative DNS server of the firewall scenario (knotd, knsupdate).
# libnginx-mod-stream: nginx's stream module, a candidate in bench/run.
for pkg in libnftnl-dev libmnl-dev pkg-config knot knot-dnsutils libnginx-mod-stream; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update
  # Debian starts packaged daemons on install; the tests run their own instances.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y --no-install-recommends "${need[@]}"
fi
# Debian starts daemons on install where it can; tests run their own instances.
pkill -x nginx 2>/dev/null || true
pkill -x haproxy 2>/dev/null || true
pkill -x knotd 2>/dev/null || true
bash tests/netns/deps.sh
