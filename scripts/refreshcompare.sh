#!/usr/bin/env bash
# Measures POST /auth/refresh on two builds side by side in one run: the service at an earlier
# revision ("before") and the working tree ("after"), each on its own embedded database, driven
# in turn, round by round, by scripts/refreshload (32 users, each refreshing its own chain), and
# prints refreshes per second per round, the after/before ratio and the medians.
# Usage: scripts/refreshcompare.sh [seconds per run, default 10] [rounds, default 3] [before-rev, default aaa2795^1]
# Targets 127.0.0.1 only; stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
rounds=${2:-3}
rev=${3:-aaa2795^1}
users=32

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

commit=$(git rev-parse --short "$rev^{commit}")
mkdir "$tmp/src"
git archive "$commit" | tar -x -C "$tmp/src"
(cd "$tmp/src" && go build -o "$tmp/before" .)
go build -o "$tmp/after" .
go build -o "$tmp/refreshload" ./scripts/refreshload
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Tokens live an hour, so that none expires in a run; one client may sign up every user.
start() { # name -> prints its port
  local port
  port=$(freeport)
  DATA_DIR="$tmp/data-$1" PORT=$port METRICS_ADDR=127.0.0.1:0 ACCESS_TOKEN_TTL=1h REFRESH_TOKEN_TTL=1h \
    SIGNUP_MAX_PER_CLIENT=0 "$tmp/$1" >"$tmp/$1.log" 2>&1 &
  pids+=($!)
  echo "$port"
}
before=$(start before)
after=$(start after)
for name in before after; do
  for i in $(seq 300); do
    grep -q '"msg":"listening".*"serves":"api"' "$tmp/$name.log" && break
    if [ "$i" = 300 ]; then echo "$name did not start:" >&2; tail -5 "$tmp/$name.log" >&2; exit 1; fi
    sleep 0.2
  done
done

# One run; the first against a service signs its users up. Its line reads
# "refreshes/s R p50_ms P p99_ms Q ok N failed 0 retried_503 M ...".
measure() {
  "$tmp/refreshload" -url "http://127.0.0.1:$1" -u $users -d "${2}s" >"$tmp/run.out" ||
    { cat "$tmp/run.out" >&2; exit 1; }
}
measure "$before" 2
measure "$after" 2

echo "refreshload -u $users -d ${secs}s, $rounds rounds, before $commit ($rev), after $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo '+changes'), $(nproc) cores, $(go version | awk '{print $3}'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-6s %12s %8s %12s %8s %7s\n' round before_rps p99_ms after_rps p99_ms ratio
retried=0
for r in $(seq "$rounds"); do
  measure "$before" "$secs"
  read -r _ brps _ _ _ bp99 _ _ _ _ _ b503 _ <"$tmp/run.out"
  measure "$after" "$secs"
  read -r _ arps _ _ _ ap99 _ _ _ _ _ a503 _ <"$tmp/run.out"
  ratio=$(python3 -c "print(f'{$arps/$brps:.2f}')")
  printf '%-6s %12s %8s %12s %8s %7s\n' "$r" "$brps" "$bp99" "$arps" "$ap99" "$ratio"
  echo "$brps $arps $ratio" >>"$tmp/rows"
  retried=$((retried + b503 + a503))
done
python3 - "$tmp/rows" <<'EOF'
import statistics, sys
rows = [list(map(float, line.split())) for line in open(sys.argv[1])]
b, a, r = (statistics.median(c) for c in zip(*rows))
print(f"median {b:.1f} before, {a:.1f} after refreshes/s; median ratio {r:.2f}")
EOF
# A 503 means a database call outlasted its timeout: the machine was too busy to measure on.
[ "$retried" = 0 ] || echo "refreshes answered 503 and retried: $retried" >&2
echo "load average at the end $(cut -d' ' -f1-3 /proc/loadavg)"
