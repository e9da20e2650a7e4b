#!/usr/bin/env bash
# Prepare this checkout: system packages (if missing) and .venv with the project installed.
# Idempotent: a second run installs nothing new. Runs unattended (CI, no stdin).
#
#   scripts/bootstrap.sh                     # python3 + venv + iproute2, then .venv
#   scripts/bootstrap.sh --with-strongswan   # also strongSwan 5.9.8 and the lab tools
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

packages=(python3 python3-venv iproute2)
if [ "$with_strongswan" = 1 ]; then
    # What LAB.md lists: charon 5.9.8, swanctl, kernel-libipsec (userspace ESP), and
    # the tools the namespace lab shells out to.
    packages+=(charon-systemd strongswan-swanctl strongswan-charon
               libcharon-extra-plugins libstrongswan-extra-plugins
               nftables tcpdump procps iputils-ping)
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
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}" </dev/null
    cleanup_policy
    trap - EXIT
else
    echo "bootstrap: system packages present"
fi

# The virtualenv: recreate only when missing or broken; reinstall the project
# only when pyproject.toml changed since the last successful install.
if ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
    echo "bootstrap: creating .venv"
    rm -rf .venv
    python3 -m venv .venv
fi
stamp=.venv/.mobike-vici-bootstrap
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ] || [ ! -x .venv/bin/mobike-vici ]; then
    echo "bootstrap: installing mobike-vici into .venv"
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
    echo "$want" > "$stamp"
else
    echo "bootstrap: .venv up to date"
fi
echo "bootstrap: done"
