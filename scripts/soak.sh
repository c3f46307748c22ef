#!/usr/bin/env bash
# Soak: two instances of the service on one shared database (FerretDB, SQLite, in a temporary
# directory) under 30 virtual users for SECONDS (300), with the database stopped for STOP seconds
# (10) at a third of the run and one instance restarted at two thirds. Prints what the users saw
# and exits non-zero when it found a fault; the logs are then kept and their directory named.
# Usage: scripts/soak.sh [seconds, default 300] [database stop in seconds, default 10]
# Extra environment (REVOCATION_MAX_LAG=3s, say) is passed to the instances. Everything listens on
# 127.0.0.1, and everything the soak starts stops with it, at most 2 minutes after the run's end.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-300}
stop=${2:-10}

work=$(mktemp -d)
keep=0
cleanup() { if ((keep)); then echo "logs kept in $work" >&2; else rm -rf "$work"; fi; }
trap cleanup EXIT

go build -o "$work/auth" .
go build -o "$work/ferretdb" ./scripts/ferretdb
go build -o "$work/soak" ./scripts/soak

# The soak stops its database and instances itself, on its own end or on a signal; timeout is
# the bound if it hangs.
status=0
timeout -k 10 $((secs + 120)) "$work/soak" -auth "$work/auth" -ferretdb "$work/ferretdb" -dir "$work" \
	-duration "${secs}s" -stop "${stop}s" || status=$?
((status == 0)) || keep=1
exit "$status"
