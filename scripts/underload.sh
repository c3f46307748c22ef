#!/usr/bin/env bash
# Runs the whole suite N times in a row (default 3) while another process keeps every core busy,
# as a loaded CI machine or a laptop compiling something else would. A test that fails here
# waits on time it should not. The busy loops end with the script, however it ends.
# Usage: scripts/underload.sh [runs, default 3] [go test flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
shift || true
hogs=()
cleanup() { for p in "${hogs[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
for _ in $(seq "$(nproc)"); do
	(while :; do :; done) &
	hogs+=($!)
done
for i in $(seq "$runs"); do
	start=$SECONDS
	echo "== run $i of $runs, with $(nproc) cores kept busy"
	go test -count=1 "$@" ./...
	echo "== run $i passed in $((SECONDS - start))s"
done
