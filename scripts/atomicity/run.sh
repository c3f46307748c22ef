#!/usr/bin/env bash
# Atomicity on FerretDB's two backends in one command: starts a throwaway PostgreSQL cluster
# (Debian's postgresql package must be installed) on a free loopback port, then races on an
# embedded FerretDB on SQLite and on one over that PostgreSQL. Arguments go to the program, e.g.
#   scripts/atomicity/run.sh -n 32 -rounds 30
# Run as root, the cluster runs as the postgres user; as anyone else, as that user.
set -euo pipefail
cd "$(dirname "$0")/../.."

pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[[ -x $pg_bin/initdb ]] || { echo "no PostgreSQL under /usr/lib/postgresql: apt-get install postgresql" >&2; exit 1; }
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

pg_dir=$(mktemp -d)
if [[ $(id -u) == 0 ]]; then chown postgres: "$pg_dir"; fi
cleanup() {
	as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -m fast stop >/dev/null 2>&1 || true
	rm -rf "$pg_dir"
}
trap cleanup EXIT

# Local connections (a socket in this 0700 directory) are trusted; TCP needs the password.
as_pg "$pg_bin/initdb" -D "$pg_dir/data" -U postgres -E UTF8 --locale=C \
	--auth-local=trust --auth-host=scram-sha-256 >/dev/null
port=
for _ in 1 2 3 4 5; do
	p=$((15000 + RANDOM % 15000)) # below Linux's ephemeral ports, where 127.0.0.1:0 listeners land
	(exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
	if as_pg "$pg_bin/pg_ctl" -D "$pg_dir/data" -l "$pg_dir/log" -w -t 30 \
		-o "-c listen_addresses=127.0.0.1 -c port=$p -c unix_socket_directories=$pg_dir" start >/dev/null; then
		port=$p
		break
	fi
done
[[ -n $port ]] || { cat "$pg_dir/log" >&2; echo "PostgreSQL did not start" >&2; exit 1; }
password=$(head -c 18 /dev/urandom | base64 | tr '+/' '-_')
as_pg "$pg_bin/psql" -h "$pg_dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
	-c "CREATE ROLE ferretdb LOGIN PASSWORD '$password'" -c "CREATE DATABASE ferretdb OWNER ferretdb"

echo "$("$pg_bin/postgres" --version), default settings, 127.0.0.1:$port"
go run ./scripts/atomicity -sqlite -postgresql "postgres://ferretdb:$password@127.0.0.1:$port/ferretdb" "$@"
