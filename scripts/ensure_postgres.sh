#!/usr/bin/env bash
# Make sure PostgreSQL answers on $DAGSTER_PG_HOST:$DAGSTER_PG_PORT (default 127.0.0.1:5432) for the production
# instance tests (llm_assets_tests/test_deploy/test_postgres_instance.py). Idempotent: does nothing when it
# answers; otherwise installs Debian's `postgresql` with apt-get (as root or through passwordless sudo), starts
# it, and lets the local `postgres` user in over TCP from 127.0.0.1 without a password (test machines only).
set -euo pipefail

host=${DAGSTER_PG_HOST:-127.0.0.1}
port=${DAGSTER_PG_PORT:-5432}
fail() {
    echo "ensure_postgres.sh: $1" >&2
    exit 1
}
answers() {
    if command -v pg_isready >/dev/null 2>&1; then
        pg_isready -q -h "$host" -p "$port"
    else
        (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
    fi
}

answers && exit 0
[ "$host" = "127.0.0.1" ] || [ "$host" = "localhost" ] \
    || fail "PostgreSQL at $host:$port does not answer; start it or point DAGSTER_PG_HOST at a running server"
command -v apt-get >/dev/null 2>&1 \
    || fail "PostgreSQL does not answer on $host:$port and apt-get is not available; install and start PostgreSQL"
if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    fail "PostgreSQL does not answer on $host:$port; run: sudo apt-get install postgresql && sudo service postgresql start"
fi

export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    "${as_root[@]}" apt-get update -qq >"$log" 2>&1 || fail "apt-get update failed: $(tail -n 1 "$log")"
    "${as_root[@]}" apt-get install -y -qq --no-install-recommends postgresql >"$log" 2>&1 \
        || fail "apt-get install postgresql failed: $(tail -n 1 "$log")"
fi
for hba in /etc/postgresql/*/main/pg_hba.conf; do  # first match wins: the rule goes on top
    grep -q "llm_assets test access" "$hba" \
        || "${as_root[@]}" sed -i '1i # llm_assets test access\nhost all postgres 127.0.0.1/32 trust' "$hba"
done
"${as_root[@]}" service postgresql restart >"$log" 2>&1 || fail "could not start PostgreSQL: $(tail -n 1 "$log")"
for _ in $(seq 30); do
    answers && exit 0
    sleep 1
done
fail "PostgreSQL was started but does not answer on $host:$port"
