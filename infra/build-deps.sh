#!/usr/bin/env bash
# What building Portico needs beyond a Rust toolchain: samael (SAML signatures through xmlsec)
# links libxmlsec1 and libxml2 and generates its bindings with libclang. Installs Debian's
# -dev packages when they are missing (as root, with apt); otherwise says which are missing.
# Idempotent; used by infra/install.sh (tests) and infra/demo.sh (the demo).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if ! command -v dpkg >/dev/null 2>&1; then
  # Not Debian: accept whatever provides the libraries to pkg-config.
  pkg-config --exists xmlsec1 libxml-2.0 2>/dev/null \
    || die "xmlsec1 and libxml2 development files (and libclang) are needed to build samael"
  exit 0
fi
missing_debs=""
for pkg in libxmlsec1-dev libxml2-dev libclang-dev pkg-config; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing_debs="$missing_debs $pkg"
done
if [ -n "$missing_debs" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    log "installing build dependencies of samael (apt):$missing_debs"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing_debs >/dev/null
  else
    die "missing Debian packages:$missing_debs (samael needs them to build)"
  fi
fi
