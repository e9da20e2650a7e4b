#!/usr/bin/env bash
# Run the demo: two native IKEv2 daemons in throwaway network namespaces (needs root).
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
bash scripts/bootstrap.sh
exec .venv/bin/mobike-vici demo
