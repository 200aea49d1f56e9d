#!/usr/bin/env bash
# README command two: run the whole test suite. Installs what is missing (idempotent), starts
# a throwaway PostgreSQL cluster (unless PORTICO_TEST_DATABASE_URL is set), a SeaweedFS S3
# server, moto's KMS endpoint and a ClamAV daemon, all on 127.0.0.1, runs `cargo test --workspace`, and stops
# everything again, whatever the outcome. Extra arguments go to `cargo test`.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$INFRA_REPO_ROOT/infra/install.sh"

run_dir="$(mktemp -d "${TMPDIR:-/tmp}/portico-test-XXXXXX")"
chmod 755 "$run_dir"
started_pg=""
cleanup() {
  "$INFRA_REPO_ROOT/infra/clamav.sh" stop "$run_dir/clamav" || true
  "$INFRA_REPO_ROOT/infra/moto.sh" stop "$run_dir/moto" || true
  "$INFRA_REPO_ROOT/infra/seaweedfs.sh" stop "$run_dir/s3" || true
  [ -n "$started_pg" ] && { "$INFRA_REPO_ROOT/infra/postgres.sh" stop "$run_dir/pg" || true; }
  rm -rf "$run_dir"
}
trap cleanup EXIT

# Static credentials and a region, so the AWS SDK never probes the cloud metadata address.
export AWS_ACCESS_KEY_ID="portico-test" AWS_SECRET_ACCESS_KEY="portico-test-secret-key"
export AWS_REGION="us-east-1" AWS_EC2_METADATA_DISABLED=true
unset AWS_PROFILE AWS_SESSION_TOKEN

if [ -z "${PORTICO_TEST_DATABASE_URL:-}" ]; then
  log "starting a throwaway PostgreSQL cluster"
  export_started "$INFRA_REPO_ROOT/infra/postgres.sh" start "$run_dir/pg"
  started_pg=1
  # Our cluster uses infra/postgresql/pg_hba.conf; the tests then also check its confinement.
  export PORTICO_TEST_PG_HBA_HARDENED=1
fi
log "starting SeaweedFS (S3), moto (KMS) and clamd (ClamAV)"
export_started "$INFRA_REPO_ROOT/infra/seaweedfs.sh" start "$run_dir/s3"
export_started "$INFRA_REPO_ROOT/infra/moto.sh" start "$run_dir/moto"
export_started "$INFRA_REPO_ROOT/infra/clamav.sh" start "$run_dir/clamav"

# The contract checkers (openapi-spec-validator, Schemathesis) that tests/e2e/openapi.rs runs.
export PORTICO_TEST_VENV="$INFRA_VENV"

cd "$INFRA_REPO_ROOT"
cargo test --workspace "$@"
