#!/usr/bin/env bash
# Full check: bootstrap with strongSwan, ruff, mypy --strict, then every test
# (namespace and charon tests included; they need root). Exit status 0 only if
# all steps pass. With CI=true a missing prerequisite fails the lab tests.
set -uo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
export DEBIAN_FRONTEND=noninteractive

bash scripts/bootstrap.sh --with-strongswan || { echo "test: bootstrap failed" >&2; exit 1; }

failed=()
step() {
    local name="$1"; shift
    echo "==> $name: $*"
    if ! "$@"; then failed+=("$name"); fi
}

step ruff .venv/bin/ruff check .
step mypy .venv/bin/mypy --strict mobike_vici
step pytest .venv/bin/python -m pytest -ra "$@"

# Hygiene: the lab must leave no namespace and no charon behind.
if command -v ip >/dev/null; then
    for ns in $(ip netns list 2>/dev/null | awk '/^mv-/{print $1}'); do
        pid="${ns#mv-}"; pid="${pid%%-*}"
        # Only namespaces of runs that are gone: a parallel run's are not ours to judge.
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "test: leftover namespace $ns" >&2
            failed+=("cleanup")
        fi
    done
fi

if [ "${#failed[@]}" -gt 0 ]; then
    echo "test: FAILED: ${failed[*]}" >&2
    exit 1
fi
echo "test: all steps passed"
