#!/usr/bin/env bash
# Drives /auth/page with a valid Bearer token and a bare net/http baseline with the same load
# generator, side by side in one run, and prints the throughput ratio and the p99 latencies.
# Usage: scripts/loadtest.sh [seconds per run, default 10] [rounds, default 3]
# The service gets the environment it is run with (JWT_ALG=EdDSA, say). With ENDED_SESSIONS=N, N
# users' ended sessions are written into its blacklist first (scripts/endsessions), as a busy
# deployment's revocation list holds them.
# Needs wrk (apt-get install wrk). Targets 127.0.0.1 only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-3}
conns=32
command -v wrk >/dev/null || { echo "wrk is not installed: apt-get install -y wrk" >&2; exit 2; }

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

go build -o "$tmp/auth" .
go build -o "$tmp/baseline" ./scripts/baseline
go build -o "$tmp/endsessions" ./scripts/endsessions
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
svc=$(freeport); base=$(freeport); met=$(freeport)

# The service logs its access lines to a file, as a collector would take them from stdout.
DATA_DIR="$tmp/data" PORT=$svc METRICS_ADDR=127.0.0.1:$met ACCESS_TOKEN_TTL=1h "$tmp/auth" >"$tmp/auth.log" 2>&1 &
pids+=($!)
"$tmp/baseline" "127.0.0.1:$base" &
pids+=($!)
for _ in $(seq 100); do
  curl -fs "127.0.0.1:$svc/healthz" >/dev/null && curl -fs "127.0.0.1:$base/" >/dev/null && break
  sleep 0.2
done

curl -fs "127.0.0.1:$svc/auth/signup" --json '{"email":"load@example.com","password":"load-test-password"}' >/dev/null
token=$(curl -fs "127.0.0.1:$svc/auth/login" --json '{"email":"load@example.com","password":"load-test-password"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
curl -fs "127.0.0.1:$svc/auth/page" -H "Authorization: Bearer $token" >/dev/null

if [ "${ENDED_SESSIONS:-0}" -gt 0 ]; then
  # The development database listens on DATA_DIR/mongo.sock; the service polls new entries in
  # within REVOCATION_SYNC_INTERVAL (1s).
  sock=$(python3 -c 'import sys,urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$tmp/data/mongo.sock")
  "$tmp/endsessions" -uri "mongodb://$sock/" -n "$ENDED_SESSIONS"
  sleep 3
  curl -fs "127.0.0.1:$met/metrics" | awk '/^auth_revocation_cache_entries/ {print "revocation entries in memory: " $2}'
fi

# wrk prints "Requests/sec: N" and, with --latency, "99%  1.23ms".
measure() {
  wrk -t2 -c$conns -d"${secs}s" --latency "$@" >"$tmp/wrk.out"
  rps=$(awk '/Requests\/sec/ {print $2}' "$tmp/wrk.out")
  p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' "$tmp/wrk.out")
  non2xx=$(awk '/Non-2xx/ {print $NF}' "$tmp/wrk.out")
  echo "$rps $p99 ${non2xx:-0}"
}

# Both servers get the very same requests, token included; the baseline ignores it.
auth=(-H "Authorization: Bearer $token")
wrk -t2 -c$conns -d2s "${auth[@]}" "http://127.0.0.1:$base/" >/dev/null
wrk -t2 -c$conns -d2s "${auth[@]}" "http://127.0.0.1:$svc/auth/page" >/dev/null

echo "wrk -t2 -c$conns -d${secs}s, $rounds rounds, $(nproc) cores, $(go version | awk '{print $3}'), JWT_ALG=${JWT_ALG:-HS256}, ENDED_SESSIONS=${ENDED_SESSIONS:-0}"
printf '%-6s %14s %10s %14s %10s %7s %7s\n' round baseline_rps p99_ms page_rps p99_ms ratio p99x
best=0
for r in $(seq "$rounds"); do
  read -r brps bp99 _ < <(measure "${auth[@]}" "http://127.0.0.1:$base/")
  read -r prps pp99 non2xx < <(measure "${auth[@]}" "http://127.0.0.1:$svc/auth/page")
  if [ "$non2xx" != 0 ]; then echo "round $r: $non2xx answers were not 2xx" >&2; exit 1; fi
  ratio=$(python3 -c "print(f'{$prps/$brps:.2f}')")
  p99x=$(python3 -c "print(f'{$pp99/$bp99:.2f}')")
  printf '%-6s %14s %10s %14s %10s %7s %7s\n' "$r" "$brps" "$bp99" "$prps" "$pp99" "$ratio" "$p99x"
  echo "$ratio $p99x" >>"$tmp/ratios"
done
sort -n "$tmp/ratios" | awk '{r[NR]=$1; p[NR]=$2} END {m=int((NR+1)/2); printf "median ratio %s (target >= 0.70), its p99 %sx (target <= 2)\n", r[m], p[m]}'
echo "access log lines written: $(grep -c '"msg":"request"' "$tmp/auth.log")"
