#!/usr/bin/env bash
# Two builds side by side: `put` then `get` of one file (the source, in
# the page cache, for both) with build A, then with build B, alternating,
# RUNS rounds; medians and min-max of each.
# Each build serves itself on loopback (exec only, as root, no auth
# settings beyond the default token). Not run by CI.
#
#   bash bench/transfer-ab.sh OLD_BINARY NEW_BINARY [SIZE_MIB] [RUNS]   (512, 9)
set -euo pipefail
a=$(realpath "$1") b=$(realpath "$2")
cd "$(dirname "$0")/.."
mib=${3:-512}
runs=${4:-9}
. bench/lib.sh
mkdir -p "$work/up" "$work/down"
head -c "$((mib << 20))" /dev/urandom >"$work/file"
"$a" serve -q --allow-root --echo none --time none --exec tcp://127.0.0.1:19221 >/dev/null 2>&1 &
pids+=($!)
"$b" serve -q --allow-root --echo none --time none --exec tcp://127.0.0.1:19222 >/dev/null 2>&1 &
pids+=($!)
sleep 1
timed() {
  local t0=$EPOCHREALTIME
  "$@" >/dev/null
  python3 -c "print($EPOCHREALTIME - $t0)"
}
for _ in $(seq "$runs"); do
  for side in A:"$a":19221 B:"$b":19222; do
    IFS=: read -r name bin port <<<"$side"
    rm -f "$work/up/file" "$work/down/file"
    echo "$name put $(timed "$bin" put "127.0.0.1:$port" "$work/file" "$work/up/")"
    echo "$name get $(timed "$bin" get "127.0.0.1:$port" "$work/file" "$work/down/")"
    cmp -s "$work/file" "$work/down/file"
  done
done >"$work/times"
python3 - "$work/times" "$((mib << 20))" <<'PY'
import collections, statistics, sys
d = collections.defaultdict(list)
for line in open(sys.argv[1]):
    who, what, secs = line.split()
    d[f"{who} {what}"].append(float(secs))
size = int(sys.argv[2])
for k in sorted(d):
    v = d[k]
    m = statistics.median(v)
    print(f"{k}: median {m:.3f} s, {size / 1e6 / m:,.0f} MB/s (min {min(v):.3f}, max {max(v):.3f})")
PY
