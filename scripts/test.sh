#!/usr/bin/env bash
# The test command (README, .ci/run): installs the project with its test extras, brings up what the
# service tests need, and runs the suite.
#   - Chromium (Debian's `chromium`) for the browser test and a throwaway PostgreSQL server (Debian's
#     `postgresql`) for the store tests. As root, missing packages are installed with apt-get and the
#     tests that need them are REQUIRED (they fail instead of skipping). Without root, whatever is
#     present is used and the rest is skipped with a reason.
#   - Extra arguments go to pytest (e.g. scripts/test.sh -m slow, scripts/test.sh tests/test_store.py).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  need=()
  command -v chromium >/dev/null || need+=(chromium)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
  if [ ${#need[@]} -gt 0 ]; then
    echo "test.sh: apt-get install ${need[*]}" >&2
    apt-get install -y -q "${need[@]}" >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${need[@]}" >/dev/null 2>&1; } \
      || echo "test.sh: WARNING: apt-get install ${need[*]} failed; their tests will be skipped" >&2
  fi
  # What is installed is required: its tests fail rather than skip.
  command -v chromium >/dev/null && export ENGINE_REQUIRE_BROWSER=1
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && export ENGINE_REQUIRE_POSTGRES=1
fi

python3 -m pip install -q -e ".[dev]"

# Lint first (pyproject's ruff config): a style error fails the run like a test does.
python3 -m ruff check .

# A throwaway PostgreSQL cluster on a free port, removed on exit.
initdb=$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true)
if [ -n "$initdb" ] && [ -z "${ENGINE_TEST_PG_URL:-}" ]; then
  bin=$(dirname "$initdb")
  pgdir=$(mktemp -d /tmp/engine-pg.XXXXXX)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  as_pg=()
  if [ "$(id -u)" = 0 ]; then chown postgres "$pgdir"; as_pg=(runuser -u postgres --); fi
  cleanup() { "${as_pg[@]}" "$bin/pg_ctl" -D "$pgdir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$pgdir"; }
  trap cleanup EXIT
  "${as_pg[@]}" "$bin/initdb" -D "$pgdir/data" -U engine --auth=trust >/dev/null
  "${as_pg[@]}" "$bin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w \
      -o "-p $port -k $pgdir -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
  export ENGINE_TEST_PG_URL="postgresql+psycopg://engine@127.0.0.1:$port/postgres"
fi

python3 -m pytest -q "$@"
