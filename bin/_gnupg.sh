# Sourced by bin/test: GnuPG (gpg 2.2 or later, gpg-agent, gpgconf), which keeps the usage key that
# PGP-encrypted LSE deliveries are decrypted with. Installs it with apt-get (as root, or through
# sudo) when it is missing, then makes its absence a test failure rather than a skip.
# HANGW_TEST_GNUPG=0 leaves it out (those tests then skip).
hangw_ensure_gnupg() {
    [ "${HANGW_TEST_GNUPG:-1}" = "0" ] && return 0
    if ! command -v gpg >/dev/null 2>&1 || ! command -v gpg-agent >/dev/null 2>&1 \
        || ! command -v gpgconf >/dev/null 2>&1; then
        local run=""
        if [ "$(id -u)" != 0 ]; then
            if command -v sudo >/dev/null 2>&1; then
                run="sudo -n"
            else
                echo "hangw: GnuPG is missing and there is neither root nor sudo to install it;" \
                    "install it (apt-get install gnupg) or set HANGW_TEST_GNUPG=0" >&2
                return 1
            fi
        fi
        if ! command -v apt-get >/dev/null 2>&1; then
            echo "hangw: GnuPG is missing and there is no apt-get here; install gnupg" \
                "or set HANGW_TEST_GNUPG=0" >&2
            return 1
        fi
        echo "hangw: installing GnuPG for the usage key tests" >&2
        $run apt-get update -qq >/dev/null
        $run env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gnupg >/dev/null
        if ! command -v gpg >/dev/null 2>&1 || ! command -v gpgconf >/dev/null 2>&1; then
            echo "hangw: apt-get installed gnupg but gpg or gpgconf is not on PATH" >&2
            return 1
        fi
    fi
    local version
    version="$(gpg --version 2>/dev/null | head -1)"
    case "$version" in
        *" 2.2."* | *" 2.3."* | *" 2.4."* | *" 2.5."* | *" "[3-9].*) ;;
        *)
            echo "hangw: the usage key needs GnuPG 2.2 or later, found: $version" >&2
            return 1
            ;;
    esac
    export HANGW_REQUIRE_GNUPG=1
    echo "hangw: $version" >&2
}
