# Sourced by bin/test: tshark, the independent decoder the sep1 pcap tests check frames against.
# Installs it with apt-get (as root, or through sudo) when it is missing, then makes its absence a
# test failure rather than a skip. HANGW_TEST_TSHARK=0 leaves it out (those tests then skip).
hangw_ensure_tshark() {
    [ "${HANGW_TEST_TSHARK:-1}" = "0" ] && return 0
    if ! command -v tshark >/dev/null 2>&1; then
        local run=""
        if [ "$(id -u)" != 0 ]; then
            if command -v sudo >/dev/null 2>&1; then
                run="sudo -n"
            else
                echo "hangw: tshark is missing and there is neither root nor sudo to install it;" \
                    "install it (apt-get install tshark) or set HANGW_TEST_TSHARK=0" >&2
                return 1
            fi
        fi
        if ! command -v apt-get >/dev/null 2>&1; then
            echo "hangw: tshark is missing and there is no apt-get here; install tshark" \
                "or set HANGW_TEST_TSHARK=0" >&2
            return 1
        fi
        echo "hangw: installing tshark for the sep1 pcap tests" >&2
        $run apt-get update -qq >/dev/null
        # wireshark-common asks whether non-root users may capture; noninteractive answers no.
        $run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tshark >/dev/null
        if ! command -v tshark >/dev/null 2>&1; then
            echo "hangw: apt-get installed tshark but it is not on PATH" >&2
            return 1
        fi
    fi
    export HANGW_REQUIRE_TSHARK=1
    echo "hangw: $(tshark --version 2>/dev/null | head -1)" >&2
}
