#!/usr/bin/env bash
# Start/stop a ClamAV daemon (clamd) on a Unix socket, with a small local signature database
# (the EICAR test string and a Portico test marker), so no signature download is ever needed.
#   infra/clamav.sh start <dir>   prints PORTICO_TEST_CLAMD=unix:<dir>/clamd.sock on stdout
#   infra/clamav.sh stop <dir>
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cmd="${1:?usage: clamav.sh start|stop <dir>}"
dir="${2:?usage: clamav.sh start|stop <dir>}"

clamd_bin() { command -v clamd 2>/dev/null || { [ -x /usr/sbin/clamd ] && echo /usr/sbin/clamd; } || true; }

case "$cmd" in
  start)
    bin="$(clamd_bin)"
    [ -n "$bin" ] || die "clamd not installed; run infra/install.sh"
    mkdir -p "$dir/db"
    dir="$(cd "$dir" && pwd)"
    # Extended (.ndb) signatures: name:target:offset:hex. EICAR's standard test string, and a
    # marker of our own for tests that need a second, distinct detection.
    eicar_hex="$(printf '%s' 'EICAR-STANDARD-ANTIVIRUS-TEST-FILE' | od -An -tx1 | tr -d ' \n')"
    marker_hex="$(printf '%s' 'PORTICO-TEST-MALWARE-MARKER' | od -An -tx1 | tr -d ' \n')"
    printf 'Portico.Test.EICAR:0:*:%s\nPortico.Test.Marker:0:*:%s\n' "$eicar_hex" "$marker_hex" > "$dir/db/portico-test.ndb"
    cat > "$dir/clamd.conf" <<CONF
LocalSocket $dir/clamd.sock
LocalSocketMode 660
DatabaseDirectory $dir/db
PidFile $dir/clamd.pid
LogFile $dir/clamd.log
Foreground false
StreamMaxLength 4000M
MaxScanSize 4000M
MaxFileSize 4000M
ReadTimeout 300
CONF
    if [ "$(id -u)" = "0" ]; then echo "User root" >> "$dir/clamd.conf"; fi
    "$bin" -c "$dir/clamd.conf" >"$dir/clamd.out" 2>&1 || { cat "$dir/clamd.out" "$dir/clamd.log" >&2 2>/dev/null; die "clamd did not start"; }
    # clamd forks once its database is loaded; wait until it answers PING on its socket.
    for _ in $(seq 1 300); do
      if python3 - "$dir/clamd.sock" <<'PY' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(1); s.connect(sys.argv[1])
s.sendall(b"zPING\0"); sys.exit(0 if s.recv(16).startswith(b"PONG") else 1)
PY
      then echo "PORTICO_TEST_CLAMD=unix:$dir/clamd.sock"; exit 0; fi
      sleep 0.2
    done
    tail -20 "$dir/clamd.log" >&2 || true
    die "clamd did not answer on $dir/clamd.sock"
    ;;
  stop)
    stop_pidfile "$dir/clamd.pid"
    ;;
  *) die "usage: clamav.sh start|stop <dir>" ;;
esac
