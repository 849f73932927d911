#!/usr/bin/env bash
# Installs what the network-namespace harness (tests/netns) needs, idempotently:
# iproute2, nftables, iptables (NFQUEUE delayer), socat, curl, python3, procps, iputils-ping,
# util-linux (setpriv), chromium and promtool (prometheus), and yggdrasil 0.5.x from
# bookworm-backports (bookworm's own 0.4.7 cannot peer with the 0.5 network).
# Runs `apt-get update` at most once, and only when something is missing.
# Stops no process it did not start: the harness starts its own routers inside namespaces, with
# no public peers and multicast disabled.
set -euo pipefail

# Root for apt-get: re-runs itself through sudo when needed.
. "$(cd "$(dirname "$0")/../.." && pwd)/scripts/lib/as-root.sh"
as_root "$0" "$@"

export DEBIAN_FRONTEND=noninteractive

BACKPORTS_LIST=/etc/apt/sources.list.d/backports.list
# Same mirror as the machine's own sources (deb.debian.org through the configured proxy, if any).
MIRROR=http://deb.debian.org/debian
if ls /etc/apt/sources.list.d/*.sources >/dev/null 2>&1; then
    found=$(awk '/^URIs:/ && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/*.sources || true)
    if [ -n "${found:-}" ]; then
        MIRROR=${found%/}
    fi
fi

updated=0
apt_update() {
    if [ "$updated" -eq 0 ]; then
        apt-get update
        updated=1
    fi
}

if ! grep -qs "bookworm-backports" "$BACKPORTS_LIST"; then
    echo "deb $MIRROR bookworm-backports main" >"$BACKPORTS_LIST"
    apt_update
fi

missing=()
for pkg in iproute2 nftables iptables socat curl python3 procps iputils-ping util-linux ansible ansible-lint python3-dnspython; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
# Booted hosts (tests/nspawn_hosts.rs, tests/rollout.rs): systemd-nspawn, a debootstrap root
# filesystem, ssh to the hosts, apt-ftparchive for the local apt repository.
for pkg in systemd-container debootstrap apt-utils openssh-client; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
# ACME (local-proxy/tests/acme_pebble.rs): Debian's pebble CA and pebble-challtestsrv (its DNS).
if ! dpkg-query -W -f='${Status}' pebble 2>/dev/null | grep -q "install ok installed"; then
    missing+=(pebble)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    apt_update
    apt-get install -y --no-install-recommends "${missing[@]}"
fi
for tool in pebble pebble-challtestsrv; do
    command -v "$tool" >/dev/null 2>&1 || { echo "deps.sh: FAILED: $tool missing" >&2; exit 1; }
done

ygg_version() {
    command -v yggdrasil >/dev/null 2>&1 || return 0
    yggdrasil -version 2>/dev/null | awk '/[Bb]uild version/ {print $NF; exit}'
}

version=$(ygg_version)
case "$version" in
    0.5.*) ;;
    *)
        apt_update
        # policy-rc.d 101 keeps the package from starting its system service while installing.
        policy=/usr/sbin/policy-rc.d
        had_policy=0
        [ -e "$policy" ] && had_policy=1
        if [ "$had_policy" -eq 0 ]; then
            printf '#!/bin/sh\nexit 101\n' >"$policy"
            chmod +x "$policy"
        fi
        apt-get install -y --no-install-recommends -t bookworm-backports yggdrasil
        installed_ygg=1
        if [ "$had_policy" -eq 0 ]; then
            rm -f "$policy"
        fi
        version=$(ygg_version)
        ;;
esac
case "$version" in
    0.5.*) echo "deps.sh: yggdrasil $version" ;;
    *)
        echo "deps.sh: FAILED: yggdrasil 0.5.x required, found '${version:-none}'" >&2
        yggdrasil -version >&2 || true
        exit 1
        ;;
esac

# The harness runs its own routers inside its namespaces (no public peers, multicast off), so a
# system-wide yggdrasil does not reach them. The packaged service is stopped and disabled only
# when this script installed the package just now (policy-rc.d kept it from starting; this
# makes sure it stays off at the next boot too); a router the user runs is never touched.
if [ "${installed_ygg:-0}" -eq 1 ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now yggdrasil.service >/dev/null 2>&1 || true
fi

# tests/turn.rs runs coturn's turnserver and turnutils_uclient; tests/routing.rs makes
# certificates and serves TLS with openssl. The tests start their own turnserver inside a
# namespace: the package's system service is kept from starting, and disabled when installed here.
turn_missing=()
for pkg in coturn openssl; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        turn_missing+=("$pkg")
    fi
done
if [ "${#turn_missing[@]}" -gt 0 ]; then
    apt_update
    turn_policy=/usr/sbin/policy-rc.d
    turn_had_policy=0
    [ -e "$turn_policy" ] && turn_had_policy=1
    if [ "$turn_had_policy" -eq 0 ]; then
        printf '#!/bin/sh\nexit 101\n' >"$turn_policy"
        chmod +x "$turn_policy"
    fi
    apt-get install -y --no-install-recommends "${turn_missing[@]}"
    if [ "$turn_had_policy" -eq 0 ]; then
        rm -f "$turn_policy"
    fi
    # Just installed by us: keep the package's service off at the next boot too. A coturn the
    # user already ran is never stopped (the tests' turnserver lives in its own namespace).
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now coturn.service >/dev/null 2>&1 || true
    fi
fi
for tool in turnserver turnutils_uclient openssl; do
    command -v "$tool" >/dev/null 2>&1 || { echo "deps.sh: FAILED: $tool missing" >&2; exit 1; }
done

# tests/status_page.rs opens the admin status page in headless chromium; scripts/test checks
# the shipped alert rules with promtool (from Debian's prometheus package). The package's
# prometheus service is kept from starting, and disabled when installed here: only promtool is used.
ops_missing=()
for pkg in chromium prometheus; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        ops_missing+=("$pkg")
    fi
done
if [ "${#ops_missing[@]}" -gt 0 ]; then
    apt_update
    ops_policy=/usr/sbin/policy-rc.d
    ops_had_policy=0
    [ -e "$ops_policy" ] && ops_had_policy=1
    if [ "$ops_had_policy" -eq 0 ]; then
        printf '#!/bin/sh\nexit 101\n' >"$ops_policy"
        chmod +x "$ops_policy"
    fi
    apt-get install -y --no-install-recommends "${ops_missing[@]}"
    if [ "$ops_had_policy" -eq 0 ]; then
        rm -f "$ops_policy"
    fi
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    fi
fi
for tool in chromium promtool; do
    command -v "$tool" >/dev/null 2>&1 || { echo "deps.sh: FAILED: $tool missing" >&2; exit 1; }
done

for tool in ip tc ss nft iptables-legacy socat curl python3 pgrep ping sysctl setpriv yggdrasil yggdrasilctl; do
    command -v "$tool" >/dev/null 2>&1 || { echo "deps.sh: FAILED: $tool missing" >&2; exit 1; }
done
echo "deps.sh: all dependencies present"
