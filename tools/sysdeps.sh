#!/usr/bin/env bash
# The system programs `make test` needs, installed when possible.
#
# The conformance suite drives the examples with real clients (curl, wrk,
# redis-cli, redis-benchmark, openssl), watches processes with ps, and loads
# the docs site in headless Chromium; `make` itself needs a Python that can
# make a venv. Those tests fail, never skip, when a program is missing, so
# this script runs first and settles it in one place:
#
#   - everything present: prints one line and exits 0;
#   - something missing, running as root where apt-get exists (Debian, CI):
#     installs the packages and checks again;
#   - otherwise: stops at once, naming the exact command to run, exit 1.
#
# Called by `make test` (and so by .ci/run). Usage:
#
#   tools/sysdeps.sh           # check, install if we can
#   tools/sysdeps.sh --check   # check only; never install
set -euo pipefail

cd "$(dirname "$0")/.."

# command -> Debian package that provides it
TOOLS=(
    "curl curl"
    "wrk wrk"
    "redis-cli redis-tools"
    "redis-benchmark redis-tools"
    "openssl openssl"
    "ps procps"
    "chromium chromium"
)

check_only=0
[[ "${1:-}" == "--check" ]] && check_only=1

have() {
    command -v "$1" >/dev/null 2>&1
}

venv_works() {
    # An existing .venv proves it; otherwise try one (Debian's python3 needs
    # python3-venv for this, which a fresh machine may lack).
    [[ -x .venv/bin/python ]] && return 0
    have python3 || return 1
    local tmp
    tmp="$(mktemp -d)"
    if python3 -m venv "$tmp/venv" >/dev/null 2>&1; then
        rm -rf "$tmp"
        return 0
    fi
    rm -rf "$tmp"
    return 1
}

missing_packages() {
    local pkgs=() entry cmd pkg
    for entry in "${TOOLS[@]}"; do
        cmd="${entry%% *}"
        pkg="${entry#* }"
        if ! have "$cmd"; then
            [[ " ${pkgs[*]-} " == *" $pkg "* ]] || pkgs+=("$pkg")
        fi
    done
    venv_works || pkgs+=("python3-venv")
    echo "${pkgs[*]-}"
}

missing="$(missing_packages)"
if [[ -z "$missing" ]]; then
    echo "sysdeps: all present (curl wrk redis-tools openssl procps chromium, python3 -m venv)"
    exit 0
fi

command="apt-get update && apt-get install -y --no-install-recommends $missing"
if ((check_only == 0)) && [[ "$(id -u)" == 0 ]] && have apt-get; then
    echo "sysdeps: installing $missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    # shellcheck disable=SC2086  # one word per package
    apt-get install -y --no-install-recommends $missing
    missing="$(missing_packages)"
    if [[ -z "$missing" ]]; then
        echo "sysdeps: all present"
        exit 0
    fi
    echo "sysdeps: still missing after apt-get: $missing" >&2
    exit 1
fi

{
    echo "sysdeps: make test needs these system packages, which are not installed: $missing"
    if have apt-get; then
        echo "Install them as root, then run make test again:"
        echo
        echo "    sudo sh -c '$command'"
    else
        echo "No apt-get here: install the programs these Debian packages provide"
        echo "(curl, wrk, redis-cli and redis-benchmark, openssl, ps, chromium, python3 -m venv)"
        echo "with this system's package manager, then run make test again. On Debian:"
        echo
        echo "    $command"
    fi
} >&2
exit 1
