# What bench/upstreams, bench/access-log and bench/udp-reuseport share, sourced by each. Expects
# the array `pids` (started processes, which the caller's cleanup trap kills at exit).

# Stops process $1 (one of `pids`) and takes it off the list, so that the trap does not signal
# a pid the system may have given to another process since.
stop_pid() {
  local p keep=()
  kill "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  pids=("${keep[@]}")
}

# Prints the requests/s of wrk's output in file $1; fails, showing that output, when it has
# none or when wrk counted errors ("Socket errors: connect A, read B, write C, timeout D",
# "Non-2xx or 3xx responses: N"): a rate that includes failures is not the proxy's.
wrk_rps() {
  local rps errors
  rps=$(awk '/^Requests\/sec:/ {print $2}' "$1")
  errors=$(awk '/^ *Socket errors:/ {sub(/^ *Socket errors:/, ""); n = split($0, f, ","); for (i = 1; i <= n; i++) {split(f[i], w, " "); s += w[2]}}
    /^ *Non-2xx or 3xx responses:/ {s += $NF} END {print s + 0}' "$1")
  if [ -z "$rps" ] || [ "$errors" != 0 ]; then
    echo "wrk: ${rps:-no} requests/s, $errors errors:" >&2
    cat "$1" >&2
    return 1
  fi
  echo "$rps"
}
