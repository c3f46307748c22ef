#!/usr/bin/env bash
# Drives a bare net/http baseline, /auth/page with a valid Bearer token and /auth/page with the
# portal's session cookie (signed in through /login as a browser does) with the same load generator,
# in turn in each round, and prints each check's throughput ratio to the baseline and the p99s.
# Usage: scripts/loadtest.sh [seconds per run, default 10] [rounds, default 3]
# The service gets the environment it is run with (JWT_ALG=EdDSA, say). With ENDED_SESSIONS=N, N
# users' ended sessions are written into its blacklist first (scripts/endsessions), as a busy
# deployment's revocation list holds them.
# The service runs in development mode, so the portal is on at http://localhost:PORT.
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

# The portal's sign-in as a browser at PUBLIC_URL makes it: the form and its CSRF cookie, then the
# POST with the headers of a same-origin form; the session cookie comes back in Set-Cookie.
portal=(--resolve "localhost:$svc:127.0.0.1" -b "$tmp/jar" -c "$tmp/jar")
csrf=$(curl -fs "${portal[@]}" "http://localhost:$svc/login" | sed -n 's/.*name="csrf" value="\([^"]*\)".*/\1/p' | head -1)
curl -fs "${portal[@]}" -o /dev/null -D "$tmp/login.headers" "http://localhost:$svc/login" \
  -H "Origin: http://localhost:$svc" -H "Sec-Fetch-Site: same-origin" -H "Sec-Fetch-Mode: navigate" \
  --data-urlencode "csrf=$csrf" --data-urlencode "email=load@example.com" --data-urlencode "password=load-test-password"
session=$(sed -n 's/^[Ss]et-[Cc]ookie: auth_session=\([^;]*\);.*/\1/p' "$tmp/login.headers" | tail -1)
[ -n "$session" ] || { echo "the portal's sign-in set no session cookie:" >&2; cat "$tmp/login.headers" >&2; exit 1; }
# The cookie is host-only for localhost; wrk sends it explicitly, so 127.0.0.1 serves as well.
curl -fs "127.0.0.1:$svc/auth/page" -H "Cookie: auth_session=$session" | grep -q '"load@example.com"' ||
  { echo "the session cookie does not pass /auth/page" >&2; exit 1; }

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

# The baseline gets the bearer request; it ignores the token.
auth=(-H "Authorization: Bearer $token")
cookie=(-H "Cookie: auth_session=$session")
wrk -t2 -c$conns -d2s "${auth[@]}" "http://127.0.0.1:$base/" >/dev/null
wrk -t2 -c$conns -d2s "${auth[@]}" "http://127.0.0.1:$svc/auth/page" >/dev/null
wrk -t2 -c$conns -d2s "${cookie[@]}" "http://127.0.0.1:$svc/auth/page" >/dev/null

echo "wrk -t2 -c$conns -d${secs}s, $rounds rounds, $(nproc) cores, $(go version | awk '{print $3}'), JWT_ALG=${JWT_ALG:-HS256}, ENDED_SESSIONS=${ENDED_SESSIONS:-0}"
row='%-6s %12s %7s %12s %7s %12s %7s %8s %8s %8s %8s\n'
printf "$row" round baseline_rps p99_ms bearer_rps p99_ms cookie_rps p99_ms ratio_b ratio_c p99x_b p99x_c
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
for r in $(seq "$rounds"); do
  read -r brps bp99 _ < <(measure "${auth[@]}" "http://127.0.0.1:$base/")
  read -r prps pp99 pnon2xx < <(measure "${auth[@]}" "http://127.0.0.1:$svc/auth/page")
  read -r crps cp99 cnon2xx < <(measure "${cookie[@]}" "http://127.0.0.1:$svc/auth/page")
  if [ "$pnon2xx" != 0 ] || [ "$cnon2xx" != 0 ]; then
    echo "round $r: not 2xx: $pnon2xx bearer answers, $cnon2xx cookie answers" >&2; exit 1
  fi
  pr=$(ratio "$prps" "$brps"); cr=$(ratio "$crps" "$brps"); px=$(ratio "$pp99" "$bp99"); cx=$(ratio "$cp99" "$bp99")
  printf "$row" "$r" "$brps" "$bp99" "$prps" "$pp99" "$crps" "$cp99" "$pr" "$cr" "$px" "$cx"
  echo "$pr $px" >>"$tmp/bearer"
  echo "$cr $cx" >>"$tmp/cookie"
done
# Each check's median ratio over the rounds, with the p99 factor of the round that gave it.
median() { sort -n "$1" | awk '{r[NR]=$1; p[NR]=$2} END {m=int((NR+1)/2); printf "%s (p99 %sx)", r[m], p[m]}'; }
echo "median ratio: bearer $(median "$tmp/bearer"), cookie $(median "$tmp/cookie"); target >= 0.70, p99 <= 2x"
echo "access log lines written: $(grep -c '"msg":"request"' "$tmp/auth.log")"
