#!/usr/bin/env bash
# Login storm: N (400) simultaneous logins, from as many clients, against a freshly built service
# on the embedded database. Passes when every login gets an answer (200, 429 or 503; no reset, no
# timeout) within HASH_WAIT + 1s, at least 70% of the logins the hashing slots can serve within
# HASH_WAIT succeed (timed before the storm, all slots at once: see scripts/loginstorm), the process's peak RSS stays at or under LIMIT_MIB (256), and the service is
# healthy afterwards. Extra environment (HASH_CONCURRENCY, HASH_WAIT, GOMEMLIMIT, ...) is passed
# to the service.
#
# DB=external runs the database in a process of its own (scripts/ferretdb) and storms a service
# freshly started on it: the account is made and the logins timed on a first instance, which then
# stops, so that the storm is the second instance's first requests (a restart's thundering herd).
# The peak RSS is then the service's alone.
set -euo pipefail
cd "$(dirname "$0")/.."

N=${N:-400}
DB=${DB:-embedded}
[[ $DB == embedded || $DB == external ]] || { echo "DB: embedded or external" >&2; exit 2; }
LIMIT_MIB=${LIMIT_MIB:-256}
EMAIL=storm@example.com
PASSWORD='correct horse battery'

work=$(mktemp -d)
pid=
dbpid=
stop() {
	if [[ -n $1 ]] && kill -0 "$1" 2>/dev/null; then
		kill "$1"
		wait "$1" || true
	fi
}
cleanup() {
	stop "$pid"
	stop "$dbpid"
	rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/auth" .
go build -o "$work/loginstorm" ./scripts/loginstorm

db_env=()
if [[ $DB == external ]]; then
	go build -o "$work/ferretdb" ./scripts/ferretdb
	"$work/ferretdb" -dir "$work/db" >"$work/db.uri" 2>"$work/db.log" &
	dbpid=$!
	for _ in $(seq 1 300); do
		[[ -s $work/db.uri ]] && break
		kill -0 "$dbpid" 2>/dev/null || { cat "$work/db.log"; echo "ferretdb exited" >&2; exit 1; }
		sleep 0.1
	done
	db_env=(MONGODB_URI="$(head -n 1 "$work/db.uri")" JWT_SECRET="$(head -c 32 /dev/urandom | base64)")
fi

# start runs an instance on any free loopback ports, the metrics' too; the service logs the ones it
# got. The storm's clients are named in X-Forwarded-For, which the service believes from loopback.
start() {
	env HOST=127.0.0.1 PORT=0 METRICS_ADDR=127.0.0.1:0 DATA_DIR="$work/data" TRUSTED_PROXIES=127.0.0.1 "${db_env[@]}" \
		"$work/auth" >"$work/log" 2>&1 &
	pid=$!
	base=
	for _ in $(seq 1 600); do
		addr=$(grep -o '"msg":"listening","serves":"api","addr":"[^"]*"' "$work/log" | sed 's/.*"addr":"//; s/"$//' || true)
		if [[ -n $addr ]]; then base=http://$addr; break; fi
		kill -0 "$pid" 2>/dev/null || { cat "$work/log"; echo "the service exited" >&2; exit 1; }
		sleep 0.1
	done
	[[ -n $base ]] || { echo "the service did not start listening" >&2; exit 1; }
}
start
creds=$(printf '{"email":"%s","password":"%s"}' "$EMAIL" "$PASSWORD")
curl -fsS "$base/auth/signup" --json "$creds" >/dev/null

fail=0
cores=$(nproc)
slots=${HASH_CONCURRENCY:-$((cores < 4 ? cores : 4))}
wait=${HASH_WAIT:-3s}
storm=("$work/loginstorm" -n "$N" -email "$EMAIL" -password "$PASSWORD" -slots "$slots" -wait "$wait")
if [[ $DB == external ]]; then
	round=$("${storm[@]}" -url "$base/auth/login" -measure)
	stop "$pid"
	start
	storm+=(-round "$round")
fi
rss_before=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
"${storm[@]}" -url "$base/auth/login" || fail=1

# VmHWM is the kernel's own high-water mark of the resident set: the peak, however brief.
peak_kib=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
peak_mib=$((peak_kib / 1024))
echo "peak RSS: ${peak_mib} MiB (limit ${LIMIT_MIB} MiB; ${rss_before} KiB before the storm)"
((peak_mib <= LIMIT_MIB)) || { echo "FAIL: peak RSS over the limit"; fail=1; }
if [[ -n $dbpid ]]; then
	echo "the database process's peak RSS: $(($(awk '/^VmHWM/ {print $2}' "/proc/$dbpid/status") / 1024)) MiB"
fi

if curl -fsS "$base/healthz" >/dev/null; then echo "healthz after the storm: 200"; else echo "FAIL: healthz"; fail=1; fi
code=$(curl -sS -o /dev/null -w '%{http_code}' "$base/auth/login" --json "$creds")
echo "a normal login after the storm: $code"
[[ $code == 200 ]] || fail=1
if ! kill -0 "$pid" 2>/dev/null; then echo "FAIL: the service died"; fail=1; fi

if ((fail)); then
	echo "login storm: FAIL"
	grep -v "\"msg\":\"request\"" "$work/log" | tail -n 20
	exit 1
fi
echo "login storm: PASS"
