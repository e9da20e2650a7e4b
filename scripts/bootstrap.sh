#!/usr/bin/env bash
# Prepare this checkout: system packages (if missing) and .venv with the project installed.
# Idempotent: a second run installs nothing new. Runs unattended (CI, no stdin).
#
#   scripts/bootstrap.sh                     # what the demo needs (python3, venv, lab tools)
#   scripts/bootstrap.sh --with-strongswan   # also strongSwan 5.9.8 with every lab plugin
set -euo pipefail

usage() { sed -n '2,6s/^# \{0,1\}//p' "$0"; }

with_strongswan=0
for arg in "$@"; do
    case "$arg" in
        --with-strongswan) with_strongswan=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bootstrap: unknown argument: $arg" >&2; usage >&2; exit 2 ;;
    esac
done

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export DEBIAN_FRONTEND=noninteractive

# The demo's namespace lab shells out to ip, nft, ping and unshare
# (mobike_vici/lab/prereq.py names the same packages).
packages=(python3 python3-venv iproute2 nftables iputils-ping procps util-linux)
if [ "$with_strongswan" = 1 ]; then
    # charon 5.9.8 and swanctl, plus every package that ships a plugin of the lab's
    # `load` list (mobike_vici/lab/prereq.py, PLUGIN_PACKAGES): gcm, openssl and aesni
    # live in libstrongswan-standard-plugins, only a Recommends of charon, so
    # --no-install-recommends would leave them out. strongswan-pki makes test
    # certificates; tcpdump counts packets in tests.
    packages+=(charon-systemd strongswan-charon strongswan-swanctl strongswan-libcharon
               libstrongswan libstrongswan-standard-plugins libstrongswan-extra-plugins
               libcharon-extra-plugins strongswan-pki tcpdump)
fi

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
for pkg in "${packages[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bootstrap: missing packages: ${missing[*]}" >&2
        echo "bootstrap: run as root (sudo $0 $*) or install them first" >&2
        exit 1
    fi
    echo "bootstrap: installing ${missing[*]}"
    # Installing strongSwan must not start the host's own IPsec services: the lab
    # runs its own charons in namespaces. policy-rc.d is Debian's switch for that.
    made_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        made_policy=1
    fi
    cleanup_policy() { if [ "$made_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi; }
    trap cleanup_policy EXIT
    log=$(mktemp)
    if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
            </dev/null >"$log" 2>&1; then
        cat "$log" >&2; rm -f "$log"
        echo "bootstrap: apt-get failed (output above)" >&2
        exit 1
    fi
    rm -f "$log"
    cleanup_policy
    trap - EXIT
else
    echo "bootstrap: system packages present"
fi

# The virtualenv: recreate only when missing or broken; reinstall the project
# only when pyproject.toml changed since the last successful install. The test tools and
# the plot extra (the demo's picture) come with it; a server's install needs neither.
if ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
    echo "bootstrap: creating .venv"
    rm -rf .venv
    python3 -m venv .venv
fi
stamp=.venv/.mobike-vici-bootstrap
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] || [ ! -x .venv/bin/mobike-vici ]; then
    echo "bootstrap: installing mobike-vici into .venv"
    # pip and the build backend are chatty even with -q; their output is shown only on failure.
    log=$(mktemp)
    pip=(.venv/bin/python -m pip install -q --disable-pip-version-check --root-user-action=ignore)
    if ! { "${pip[@]}" --upgrade pip && "${pip[@]}" -e '.[test,plot]'; } >"$log" 2>&1; then
        cat "$log" >&2; rm -f "$log"
        echo "bootstrap: pip install failed (output above)" >&2
        exit 1
    fi
    rm -f "$log"
    echo "$want" > "$stamp"
else
    echo "bootstrap: .venv up to date"
fi
echo "bootstrap: done"
