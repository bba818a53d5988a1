#!/usr/bin/env bash
# What a key login costs next to the token's: fresh connection + handshake
# + one `true` job (exec-connect), and jobs on one kept connection (exec),
# against one server with `--auth either`, token and key runs alternating.
# Prints each run and the medians with the ratio key/token.
# Usage: bash bench/keys.sh [BIN] [SECONDS] [RUNS]
set -euo pipefail
bin=${1:-target/release/switchboard} secs=${2:-5} runs=${3:-3}
home=$(mktemp -d)
export HOME=$home XDG_CONFIG_HOME=$home/.config
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; wait 2>/dev/null; rm -rf "$home"' EXIT
"$bin" keygen -f "$home/id" -C bench -N '' >/dev/null 2>&1
install -m 600 "$home/id.pub" "$home/authorized_keys"
"$bin" serve -q --allow-root --echo none --time none --exec tcp://127.0.0.1:0 \
  --audit-log none --auth either --authorized-keys "$home/authorized_keys" >"$home/banner" &
pid=$!
for _ in $(seq 100); do grep -q '^ready' "$home/banner" && break; sleep 0.05; done
addr=$(awk '$1=="exec" && $2 ~ /^tcp:/ {sub("tcp://","",$2); print $2}' "$home/banner")
rate() { # MODE WHO -> jobs/s
  local who=()
  [ "$2" = key ] && who=(-i "$home/id")
  "$bin" bench "$1" "$addr" --conns 1 --duration "${secs}s" --json "${who[@]}" |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["requests_per_sec"]))'
}
declare -A got
for run in $(seq "$runs"); do
  for m in exec-connect exec; do
    for who in token key; do
      r=$(rate "$m" "$who")
      got["$m $who"]+="$r "
      echo "run $run $m $who: $r jobs/s"
    done
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
for m in exec-connect exec; do
  t=$(echo "${got["$m token"]}" | median); k=$(echo "${got["$m key"]}" | median)
  echo "median $m: token $t, key $k jobs/s, key/token $(python3 -c "print(f'{$k/$t:.2f}')")"
done
