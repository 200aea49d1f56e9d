#!/usr/bin/env bash
# Start/stop a throwaway PostgreSQL cluster on 127.0.0.1 with password (SCRAM) authentication,
# so tenant role passwords are really checked.
#   infra/postgres.sh start <dir>   prints PORTICO_TEST_DATABASE_URL=… on stdout
#   infra/postgres.sh stop <dir>
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cmd="${1:?usage: postgres.sh start|stop <dir>}"
dir="${2:?usage: postgres.sh start|stop <dir>}"

case "$cmd" in
  start)
    bindir="$(pg_bindir)" || die "PostgreSQL server binaries not found; run infra/install.sh"
    mkdir -p "$dir"
    password="$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
    printf '%s' "$password" > "$dir/pwfile"
    [ "$(id -u)" = "0" ] && chown -R "${PORTICO_PG_OS_USER:-postgres}:" "$dir"
    as_pg_user "$bindir/initdb" -D "$dir/data" -U postgres --pwfile="$dir/pwfile" \
      --auth-local=scram-sha-256 --auth-host=scram-sha-256 -E UTF8 --locale=C \
      --no-instructions >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    rm -f "$dir/pwfile"
    # Tenant roles may reach only the database named like them (see infra/postgresql/pg_hba.conf).
    cp "$INFRA_REPO_ROOT/infra/postgresql/pg_hba.conf" "$dir/data/pg_hba.conf"
    [ "$(id -u)" = "0" ] && chown "${PORTICO_PG_OS_USER:-postgres}:" "$dir/data/pg_hba.conf"
    port="$(free_port)"
    as_pg_user "$bindir/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -c unix_socket_directories=$dir -c max_connections=300" \
      start >/dev/null || { tail -20 "$dir/postgres.log" >&2; die "PostgreSQL did not start"; }
    echo "$port" > "$dir/port"
    echo "PORTICO_TEST_DATABASE_URL=postgres://postgres:$password@127.0.0.1:$port/postgres"
    ;;
  stop)
    if [ -d "$dir/data" ]; then
      bindir="$(pg_bindir)" || exit 0
      as_pg_user "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    fi
    ;;
  *) die "usage: postgres.sh start|stop <dir>" ;;
esac
