#!/usr/bin/env bash
# Debian packages the tests and the demo use, installed only when missing (idempotent):
# real peers (nginx, haproxy, caddy), clients (curl, openssl), load tools (iperf3, wrk, h2load),
# then the network-namespace harness's own list (yggdrasil 0.5 from bookworm-backports,
# nftables, ...). Nothing here stops or kills a process: the tests and benches run their own
# nginx, haproxy, caddy, knotd, coturn and yggdrasil with their own configs, ports, pid files and
# namespaces, so a web server or DNS server the user already runs is left alone (and does not
# disturb the tests).
set -euo pipefail
. "$(dirname "$0")/lib/as-root.sh"
as_root "$0" "$@"
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
need=()
# caddy and h2load (nghttp2-client): bench/tls's third TLS terminator and its client.
# systemd-socket-activate: passes a listening socket as a socket unit would (ingress tests).
for pair in curl:curl openssl:openssl nginx:nginx-light haproxy:haproxy iperf3:iperf3 wrk:wrk \
  caddy:caddy h2load:nghttp2-client systemd-socket-activate:systemd; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || need+=("$pkg")
done
# Build dependencies of the nftables netlink crates (nftnl-sys, mnl-sys link these).
# knot: the authoritative DNS server of the firewall scenario (knotd, knsupdate).
# libnginx-mod-stream: nginx's stream module, a candidate in bench/run.
# lintian: scripts/package checks the .deb packages with it; logrotate: scripts/check-packages
# has it read the one local-proxy ships.
for pkg in libnftnl-dev libmnl-dev pkg-config knot knot-dnsutils libnginx-mod-stream lintian logrotate; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update
  # Debian starts packaged daemons on install (nginx on port 80, haproxy, knotd); the tests
  # run their own instances, so a policy-rc.d that answers 101 ("action forbidden") keeps the
  # packages from starting theirs. A policy-rc.d the machine already has is left as it is.
  policy=/usr/sbin/policy-rc.d
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get install -y --no-install-recommends "${need[@]}"
fi
# cargo-afl (AFL++ driven through cargo on the stable toolchain) for scripts/fuzz: installed
# once, and its AFL++ runtime built once per Rust toolchain ("already built" is the idempotent
# answer; anything else is a real failure).
if ! cargo afl --version >/dev/null 2>&1; then
  cargo install cargo-afl --locked
fi
if ! afl_out=$(cargo afl config --build 2>&1) && ! grep -q "already built" <<<"$afl_out"; then
  echo "$afl_out" >&2
  exit 1
fi
bash tests/netns/deps.sh
