#!/usr/bin/env bash
# System packages the test suite runs for real beyond Python (each line below says which tests):
# coturn, Redis (and its Sentinel), Chromium, nginx, PgBouncer, libfaketime, strace, the PostgreSQL
# client tools and server binaries, iproute2, Janus.
# Installed from Debian's packages only when missing.
set -euo pipefail
need=()
command -v turnserver >/dev/null 2>&1 || need+=(coturn)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# tests/integration/test_redis_sentinel.py runs private sentinels watching a master and a replica.
command -v redis-sentinel >/dev/null 2>&1 || need+=(redis-sentinel)
# tests/browser/test_browser.py drives Debian's Chromium through Playwright (never a downloaded browser).
[ -x /usr/bin/chromium ] || need+=(chromium)
# tests/integration/test_deploy_nginx.py runs a private nginx with deploy/nginx/kinwire.conf.
[ -x /usr/sbin/nginx ] || need+=(nginx)
# tests/integration/test_pgbouncer.py runs a private PgBouncer (transaction pooling) in front of PostgreSQL.
[ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
# tests/integration/test_wall_clock.py moves the tests' clock to awkward hours with libfaketime.
[ -e /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || need+=(faketime)
# tests/integration/test_durability.py traces a real server's system calls (fsync before the reply).
command -v strace >/dev/null 2>&1 || need+=(strace)
# `kinwire backup`/`restore` on PostgreSQL run pg_dump/pg_restore (tests/integration/test_backup.py). Debian's
# postgresql-client is the release's major version (15 on bookworm), which must be at least
# the server's: check `pg_dump --version` against `SELECT version()`.
command -v pg_dump >/dev/null 2>&1 || need+=(postgresql-client)
# tests/integration/test_restore_drill.py runs a private cluster (initdb, WAL archiving, pg_basebackup,
# point-in-time recovery) with the server binaries under /usr/lib/postgresql/*/bin.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need+=(postgresql)
# tests/support/impaired_link.py puts the family's browser in a network namespace behind TUN devices
# (ip netns, ip addr; sysctl from procps). The tests need root and /dev/net/tun, or skip.
[ -x /usr/sbin/ip ] || [ -x /sbin/ip ] || need+=(iproute2)
command -v sysctl >/dev/null 2>&1 || [ -x /usr/sbin/sysctl ] || need+=(procps)
# tests/integration/test_janus_*.py run private Janus servers (VideoRoom, HTTP API, sample event
# handler) from deploy/janus/; janus-tools brings janus-pp-rec, which turns its .mjr recordings
# into WebM/Opus.
command -v janus >/dev/null 2>&1 || need+=(janus)
command -v janus-pp-rec >/dev/null 2>&1 || need+=(janus-tools)
if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "system-deps: missing ${need[*]}; run 'sudo apt-get install ${need[*]}'" >&2
  exit 1
fi
echo "system-deps: installing ${need[*]} from Debian's packages"
export DEBIAN_FRONTEND=noninteractive
# Another apt run (a developer's, or a parallel set-up) may hold the lock: wait for it.
apt-get -o DPkg::Lock::Timeout=300 update -qq
apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The package's own service is not wanted: tests start private turnservers on free ports.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now coturn >/dev/null 2>&1 || true; fi
# Nor nginx's: tests start private nginx instances with their own prefix and ports.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now nginx >/dev/null 2>&1 || true; fi
command -v service >/dev/null 2>&1 && service nginx stop >/dev/null 2>&1 || true
# Nor redis-sentinel's: tests start private sentinels on free ports.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now redis-sentinel >/dev/null 2>&1 || true; fi
command -v service >/dev/null 2>&1 && service redis-sentinel stop >/dev/null 2>&1 || true
# Nor PgBouncer's: tests start private ones on free ports.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now pgbouncer >/dev/null 2>&1 || true; fi
command -v service >/dev/null 2>&1 && service pgbouncer stop >/dev/null 2>&1 || true
# Nor Janus's: tests start private janus processes on free ports with their own config folders.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now janus >/dev/null 2>&1 || true; fi
command -v service >/dev/null 2>&1 && service janus stop >/dev/null 2>&1 || true
