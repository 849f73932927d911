#!/usr/bin/env bash
# The live failover demo: installs what the harness needs (deps.sh), builds `ingress` and the
# harness, then runs the demo as root. Extra arguments go to the demo:
#   --cut blackhole|link   --phase-secs N   --interval-ms N
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# Root for the namespaces and apt-get: re-runs itself through sudo when needed.
. "$root/scripts/lib/as-root.sh"
as_root "$0" "$@"
"$here/deps.sh"
cd "$root"
cargo build -p ingress -p netns
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
exec "$target_dir/debug/demo" "$@"
