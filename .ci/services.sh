#!/usr/bin/env bash
# Optional services some tests use (each test skips with a reason when absent).
# PostgreSQL: tests/search/test_search_postgres.py starts a throwaway server itself with
# initdb/pg_ctl; here we only make sure the server binaries are installed.
set -u
have_pg() { command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }
if ! have_pg && command -v apt-get >/dev/null 2>&1; then
    echo "installing PostgreSQL server binaries for the search-storage tests"
    (timeout 300 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq postgresql) \
        >/dev/null 2>&1 || echo "could not install postgresql; its tests will skip"
fi
have_pg && echo "PostgreSQL server binaries: available" || echo "PostgreSQL server binaries: absent"
exit 0
