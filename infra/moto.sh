#!/usr/bin/env bash
# Start/stop moto's server mode as a KMS-compatible endpoint on 127.0.0.1.
#   infra/moto.sh start <dir>   prints PORTICO_TEST_KMS_ENDPOINT=… on stdout
#   infra/moto.sh stop <dir>
# Note: moto's KMS does not refuse Decrypt with a disabled or pending-deletion key; tests check
# key state with DescribeKey instead of relying on a refusal.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cmd="${1:?usage: moto.sh start|stop <dir>}"
dir="${2:?usage: moto.sh start|stop <dir>}"

case "$cmd" in
  start)
    [ -x "$INFRA_VENV/bin/moto_server" ] || die "moto not installed; run infra/install.sh"
    mkdir -p "$dir"
    port="$(free_port)"
    nohup "$INFRA_VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/moto.log" 2>&1 &
    echo $! > "$dir/moto.pid"
    wait_for_port "$port" 60 || { tail -20 "$dir/moto.log" >&2; die "moto did not start"; }
    echo "PORTICO_TEST_KMS_ENDPOINT=http://127.0.0.1:$port"
    ;;
  stop)
    stop_pidfile "$dir/moto.pid"
    ;;
  *) die "usage: moto.sh start|stop <dir>" ;;
esac
