# Sourced by bin/test: a throwaway PostgreSQL on loopback for the store's PostgreSQL tests.
# Sets HANGW_TEST_POSTGRES_URL when a server could be started; HANGW_TEST_POSTGRES=0 skips it.
hangw_start_postgres() {
    [ "${HANGW_TEST_POSTGRES:-1}" = "0" ] && return 0
    [ -n "${HANGW_TEST_POSTGRES_URL:-}" ] && return 0   # the caller brought its own
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    if [ -z "$bin" ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "hangw: installing PostgreSQL for the store's PostgreSQL tests" >&2
            apt-get update -qq >/dev/null
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
            bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
        fi
    fi
    if [ -z "$bin" ]; then
        echo "hangw: no PostgreSQL here (and no root to install it); its tests will be skipped" >&2
        return 0
    fi
    hangw_pg_dir=$(mktemp -d /tmp/hangw-pg.XXXXXX)
    local port
    port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    local run=""
    if [ "$(id -u)" = 0 ]; then chown postgres "$hangw_pg_dir"; run="su postgres -c"; fi
    ${run:-eval} "$bin/initdb -D $hangw_pg_dir/data -A trust -U postgres >/dev/null"
    ${run:-eval} "$bin/pg_ctl -D $hangw_pg_dir/data -w -l $hangw_pg_dir/log \
        -o '-c listen_addresses=127.0.0.1 -p $port -k $hangw_pg_dir -c fsync=off' start >/dev/null"
    hangw_pg_stop="${run:-eval} \"$bin/pg_ctl -D $hangw_pg_dir/data -m fast stop >/dev/null\""
    trap 'eval "$hangw_pg_stop"; rm -rf "$hangw_pg_dir"' EXIT
    export HANGW_TEST_POSTGRES_URL="postgresql+psycopg://postgres@127.0.0.1:$port/postgres"
    echo "hangw: PostgreSQL for the tests on 127.0.0.1:$port" >&2
}
