# Shared helpers for the infra scripts. Sourced, never run.
# Everything these scripts start lives under $PORTICO_INFRA_DIR (default: <repo>/.infra).

set -euo pipefail

INFRA_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PORTICO_INFRA_DIR="${PORTICO_INFRA_DIR:-$INFRA_REPO_ROOT/.infra}"
INFRA_VENV="$PORTICO_INFRA_DIR/venv"

log() { printf '[infra] %s\n' "$*" >&2; }
die() { printf '[infra] error: %s\n' "$*" >&2; exit 1; }

# A free TCP port on 127.0.0.1 (the kernel picks it; a tiny race remains until the
# service binds it, which is acceptable for test infrastructure).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# N distinct free ports P on 127.0.0.1, each with P+10000 free too (SeaweedFS puts each
# service's gRPC port 10000 above its HTTP port and refuses a port that equals another
# service's gRPC port). Every P is drawn from 11000-20999, so every P+10000 falls in
# 21000-30999: no chosen port can be another's gRPC port, and all of them stay below the
# kernel's ephemeral range (32768+), where outgoing connections could take them meanwhile.
free_ports_grpc() {
  python3 - "$1" <<'PY'
import random, socket, sys
def free(p):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p)); return True
    except OSError:
        return False
    finally:
        s.close()
want, chosen = int(sys.argv[1]), []
for _ in range(2000):
    p = random.randint(11000, 20999)
    if p not in chosen and free(p) and free(p + 10000):
        chosen.append(p)
        if len(chosen) == want:
            break
if len(chosen) < want:
    sys.exit("no free ports for SeaweedFS")
print(" ".join(map(str, chosen)))
PY
}

# Run an infra start script, which prints one NAME=VALUE line, and export that line. A script
# that fails stops the caller here (it has already said why), not at an empty export.
export_started() {
  local line
  line="$("$@")" || exit 1
  export "$line"
}

# Wait until a TCP port accepts connections, or fail after $2 seconds. Polls, because the
# services we start have no readiness notification we can block on.
wait_for_port() {
  local port="$1" timeout="${2:-60}" waited=0
  until python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.5); sys.exit(s.connect_ex(('127.0.0.1',$port)))" 2>/dev/null; do
    waited=$((waited + 1))
    [ "$waited" -le $((timeout * 5)) ] || return 1
    sleep 0.2
  done
}

# Stop the process whose pid is in file $1 (if any) and remove the file. Waits (at most 5 s)
# for it to exit, then kills it, so nothing is still writing when its directory is removed.
stop_pidfile() {
  if [ -f "$1" ]; then
    local pid
    pid="$(cat "$1")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$1"
  fi
}

# PostgreSQL binaries: PATH, `pg_config --bindir`, then the usual install locations.
pg_bindir() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(command -v initdb)"; return 0
  fi
  if command -v pg_config >/dev/null 2>&1; then
    local d; d="$(pg_config --bindir)"
    if [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
  fi
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r) /usr/local/pgsql/bin /opt/homebrew/bin /usr/local/bin; do
    if [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
  done
  return 1
}

# initdb/postgres refuse to run as root; run them as the `postgres` system user then.
as_pg_user() {
  if [ "$(id -u)" = "0" ]; then runuser -u "${PORTICO_PG_OS_USER:-postgres}" -- "$@"; else "$@"; fi
}
