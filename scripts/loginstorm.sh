#!/usr/bin/env bash
# Login storm: N (400) simultaneous logins against a freshly built service on the embedded
# database. Passes when every login gets an answer (200, 429 or 503; no reset, no timeout), the
# process's peak RSS stays at or under LIMIT_MIB (256), and the service is healthy afterwards.
# Extra environment (HASH_CONCURRENCY, HASH_QUEUE, GOMEMLIMIT, ...) is passed to the service.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-400}
LIMIT_MIB=${LIMIT_MIB:-256}
EMAIL=storm@example.com
PASSWORD='correct horse battery'

work=$(mktemp -d)
pid=
cleanup() {
	if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
		kill "$pid"
		wait "$pid" || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/auth" .
go build -o "$work/loginstorm" ./scripts/loginstorm

# A free loopback port: one that nothing answers on.
while :; do
	port=$((20000 + RANDOM % 40000))
	(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || break
done
base=http://127.0.0.1:$port

DATA_DIR=$work/data PORT=$port LOG_LEVEL=warn "$work/auth" >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 1 600); do
	curl -fsS "$base/healthz" >/dev/null 2>&1 && break
	kill -0 "$pid" 2>/dev/null || { cat "$work/log"; echo "the service exited" >&2; exit 1; }
	sleep 0.1
done
creds=$(printf '{"email":"%s","password":"%s"}' "$EMAIL" "$PASSWORD")
curl -fsS "$base/auth/signup" --json "$creds" >/dev/null
rss_before=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")

fail=0
"$work/loginstorm" -url "$base/auth/login" -n "$N" -email "$EMAIL" -password "$PASSWORD" || fail=1

# VmHWM is the kernel's own high-water mark of the resident set: the peak, however brief.
peak_kib=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
peak_mib=$((peak_kib / 1024))
echo "peak RSS: ${peak_mib} MiB (limit ${LIMIT_MIB} MiB; ${rss_before} KiB before the storm)"
((peak_mib <= LIMIT_MIB)) || { echo "FAIL: peak RSS over the limit"; fail=1; }

if curl -fsS "$base/healthz" >/dev/null; then echo "healthz after the storm: 200"; else echo "FAIL: healthz"; fail=1; fi
code=$(curl -sS -o /dev/null -w '%{http_code}' "$base/auth/login" --json "$creds")
echo "a normal login after the storm: $code"
[[ $code == 200 ]] || fail=1
if ! kill -0 "$pid" 2>/dev/null; then echo "FAIL: the service died"; fail=1; fi

if ((fail)); then
	echo "login storm: FAIL"
	tail -n 20 "$work/log"
	exit 1
fi
echo "login storm: PASS"
