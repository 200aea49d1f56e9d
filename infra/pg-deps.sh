#!/usr/bin/env bash
# PostgreSQL server binaries (initdb, pg_ctl), which the demo's and the tests' throwaway
# clusters are started with: installed with apt (Debian's `postgresql`) when none are found
# and this runs as root; otherwise says what to install. Idempotent; used by infra/install.sh
# (tests) and infra/demo.sh (the demo).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

if ! pg_bindir >/dev/null; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    log "installing PostgreSQL server binaries (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  else
    die "PostgreSQL server binaries (initdb, pg_ctl) not found; install PostgreSQL 15 or newer (Debian/Ubuntu: apt-get install postgresql)"
  fi
fi
