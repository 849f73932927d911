# Sourced (bash) by the scripts that need root (network namespaces, apt-get):
#   . scripts/lib/as-root.sh; as_root "$0" "$@"
# As root: returns. Otherwise re-runs the calling script through sudo when sudo exists, keeping
# the environment (-E) and the PATH (plus the sbin directories), CARGO_HOME and RUSTUP_HOME
# that sudo would reset (a rustup toolchain in the user's home must stay reachable), else exits
# naming what to do.
# Note: files the run creates (target/, the cargo registry cache) then belong to root.
as_root() {
    [ "$(id -u)" -eq 0 ] && return 0
    local script=$1
    if command -v sudo >/dev/null 2>&1; then
        # A user's PATH often lacks the sbin directories root's tools live in (yggdrasil, ip,
        # nft): add them.
        local path=$PATH dir
        for dir in /usr/local/sbin /usr/sbin /sbin; do
            case ":$path:" in *":$dir:"*) ;; *) path=$path:$dir ;; esac
        done
        local keep=("PATH=$path")
        local cargo_home=${CARGO_HOME:-$HOME/.cargo} rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
        [ -d "$cargo_home" ] && keep+=("CARGO_HOME=$cargo_home")
        [ -d "$rustup_home" ] && keep+=("RUSTUP_HOME=$rustup_home")
        echo "$script: needs root; re-running through sudo" >&2
        exec sudo -E env "${keep[@]}" "$@"
    fi
    echo "$script: needs root (network namespaces, apt-get): run it as root (sudo is not installed)" >&2
    exit 1
}
