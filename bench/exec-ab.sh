#!/usr/bin/env bash
# Exec jobs/s of two builds side by side, alternating runs in one session:
# jobs of `true` over 1 kept connection, over 4, and a fresh connection
# (handshake + one job) each time. Prints each run and the medians with
# the ratio B/A. The bench client is B's for both (same protocol).
# Usage: bash bench/exec-ab.sh A_BIN B_BIN [SECONDS] [RUNS]
# A_ARGS / B_ARGS (environment): more `serve` arguments for one side, e.g.
# the same build twice with B_ARGS="--config max-processes.toml".
set -euo pipefail
a=$1 b=$2 secs=${3:-5} runs=${4:-3}
home=$(mktemp -d)
export HOME=$home XDG_CONFIG_HOME=$home/.config
pid=
trap '[ -n "$pid" ] && kill $pid 2>/dev/null; wait 2>/dev/null; rm -rf "$home"' EXIT
serve() { # BIN [ARGS...] -> sets pid, addr
  local bin=$1; shift
  "$bin" serve -q --allow-root --echo tcp://127.0.0.1:0 --time 127.0.0.1:0 --exec tcp://127.0.0.1:0 "$@" >"$home/banner" &
  pid=$!
  for _ in $(seq 100); do grep -q '^ready' "$home/banner" && break; sleep 0.05; done
  addr=$(awk '$1=="exec" && $2 ~ /^tcp:/ {sub("tcp://","",$2); print $2}' "$home/banner")
}
rate() { # MODE CONNS -> jobs/s
  "$b" bench "$1" "$addr" --conns "$2" --duration "${secs}s" --json |
    python3 -c 'import json,sys; print(round(json.load(sys.stdin)["requests_per_sec"]))'
}
declare -A got
for run in $(seq "$runs"); do
  for side in A B; do
    bin=$a extra=${A_ARGS:-}; [ "$side" = B ] && bin=$b extra=${B_ARGS:-}
    # shellcheck disable=SC2086 # extra is a list of words
    serve "$bin" $extra
    for m in "exec 1" "exec 4" "exec-connect 1"; do
      r=$(rate $m)
      got["$side $m"]+="$r "
      echo "run $run $side ${m/ /, conns }: $r jobs/s"
    done
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  done
done
median() { tr ' ' '\n' | grep . | sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
for m in "exec 1" "exec 4" "exec-connect 1"; do
  ma=$(echo "${got["A $m"]}" | median); mb=$(echo "${got["B $m"]}" | median)
  echo "median ${m/ /, conns }: A $ma, B $mb jobs/s, B/A $(python3 -c "print(f'{$mb/$ma:.2f}')")"
done
