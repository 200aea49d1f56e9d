#!/usr/bin/env bash
# Start/stop a SeaweedFS S3 server (`weed mini`) bound to 127.0.0.1, telemetry off, with one
# access key, so requests are really SigV4-verified.
#   infra/seaweedfs.sh start <dir>   prints PORTICO_TEST_S3_ENDPOINT=… on stdout
#   infra/seaweedfs.sh stop <dir>
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

cmd="${1:?usage: seaweedfs.sh start|stop <dir>}"
dir="${2:?usage: seaweedfs.sh start|stop <dir>}"
weed="$INFRA_VENV/bin/weed"

case "$cmd" in
  start)
    [ -x "$weed" ] || die "SeaweedFS not installed; run infra/install.sh"
    mkdir -p "$dir/data"
    cat > "$dir/s3.json" <<JSON
{"identities":[{"name":"portico-test","credentials":[{"accessKey":"${AWS_ACCESS_KEY_ID}","secretKey":"${AWS_SECRET_ACCESS_KEY}"}],"actions":["Admin","Read","Write","List","Tagging"]}]}
JSON
    ports="$(free_ports_grpc 4)"
    read -r s3_port master_port volume_port filer_port <<<"$ports"
    # weed mini also starts a master, volume server, filer and admin; keep every one of them on
    # loopback and on ports we chose, and turn off what the tests do not need.
    nohup "$weed" mini -dir="$dir/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
      -master.telemetry=false -admin.ui=false -webdav=false \
      -master.port="$master_port" -volume.port="$volume_port" -filer.port="$filer_port" \
      -s3.port="$s3_port" -s3.config="$dir/s3.json" -s3.port.iceberg=0 -s3.port.lance=0 \
      >"$dir/weed.log" 2>&1 &
    echo $! > "$dir/weed.pid"
    wait_for_port "$s3_port" 90 || { tail -20 "$dir/weed.log" >&2; die "SeaweedFS S3 did not start"; }
    echo "PORTICO_TEST_S3_ENDPOINT=http://127.0.0.1:$s3_port"
    ;;
  stop)
    stop_pidfile "$dir/weed.pid"
    ;;
  *) die "usage: seaweedfs.sh start|stop <dir>" ;;
esac
