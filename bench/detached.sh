#!/usr/bin/env bash
# Detached jobs (issue 18 item 4, PROTOCOL.md §3.10), on loopback:
#
# 1. What the ring costs a job's output: `head -c BYTES /dev/zero` run
#    attached (`exec -- ... > /dev/null`) and detached (from `exec
#    --detach` until `jobs` says it exited), alternating, RUNS times each.
# 2. The server's memory with 64 detached jobs flooding their buffers
#    (`yes`), and with 64 writing a byte at a time (`printf x` in a shell
#    loop: a write(2) of one byte each), each kept 3 s: the buffers'
#    bound (exec.detached_buffer, 1 MiB, each chunk charged 128 bytes
#    more; 64 jobs at most by default; exec.max_detached is raised to 64
#    for the run, all of them being one identity's).
# 3. An attach replaying a full buffer: its wall time.
#
#   bash bench/detached.sh [RUNS] [BYTES]     (defaults: 5, 1073741824)
#   ONLY_MEMORY=1 bash bench/detached.sh      (2 and 3 only)
#   SB=OTHER_BINARY bash bench/detached.sh ...
#
# Every process started here is stopped by its PID on exit. Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
bytes=${2:-1073741824}
cargo build --release -q
sb=${SB:-$PWD/target/release/switchboard}
. bench/lib.sh

port=19311
addr=127.0.0.1:$port
# One identity (the token) holds all 64: the server's whole default.
printf '[exec]\nmax_detached = 64\n' >"$work/detached.toml"
"$sb" serve -q --allow-root --config "$work/detached.toml" --echo none --time none \
  --exec "tcp://$addr" --audit-log none >"$work/sb.out" 2>"$work/sb.err" &
server=$!
pids+=($server)
sleep 1

now() { python3 -c 'import time; print(time.time())'; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$server/status"; }
# Waits until every listed job has exited (bounded: 120 s).
wait_exited() {
  for _ in $(seq 2400); do
    "$sb" jobs "$addr" --json | grep -q '"state":"running"' || return 0
    sleep 0.05
  done
  echo "jobs still running after 120 s" >&2
  return 1
}
forget_all() {
  for id in $("$sb" jobs "$addr" --json | python3 -c 'import json,sys; [print(json.loads(l)["detached"]) for l in sys.stdin]'); do
    "$sb" jobs "$addr" --kill "$id" >/dev/null 2>&1 || true
  done
}

if [ -z "${ONLY_MEMORY:-}" ]; then
echo "== 1. a job writing $bytes bytes: attached vs detached (MB/s)"
att=() det=()
for i in $(seq "$runs"); do
  t0=$(now)
  "$sb" exec "$addr" -- "head -c $bytes /dev/zero" >/dev/null
  t1=$(now)
  "$sb" exec "$addr" --detach -- "head -c $bytes /dev/zero" >/dev/null
  wait_exited
  t2=$(now)
  forget_all
  a=$(python3 -c "print(round($bytes / 1e6 / ($t1 - $t0)))")
  d=$(python3 -c "print(round($bytes / 1e6 / ($t2 - $t1)))")
  att+=("$a") det+=("$d")
  echo "run $i: attached $a MB/s, detached $d MB/s"
done
python3 - "${att[*]}" "${det[*]}" <<'PY'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]
d = [float(x) for x in sys.argv[2].split()]
print(f"median: attached {statistics.median(a):.0f} MB/s, detached {statistics.median(d):.0f} MB/s, "
      f"ratio {statistics.median(d) / statistics.median(a):.2f}")
PY

fi

echo "== 2. server RSS (KiB) with 64 detached jobs"
for job in yes 'while :; do printf x; done'; do
  before=$(rss)
  for _ in $(seq 64); do "$sb" exec "$addr" --detach -- "$job" >/dev/null; done
  sleep 3
  during=$(rss)
  info=$("$sb" jobs "$addr" --json | python3 -c '
import json, sys
j = [json.loads(l) for l in sys.stdin]
print(len(j), "jobs, buffered", sum(x["buffered"] for x in j), "B, lost", sum(x["lost"] for x in j), "B")')
  for id in $("$sb" jobs "$addr" --json | python3 -c 'import json,sys; [print(json.loads(l)["detached"]) for l in sys.stdin]'); do
    "$sb" jobs "$addr" --kill "$id" >/dev/null 2>&1 || true
  done
  forget_all
  sleep 1
  echo "'$job': before $before, with 64 jobs for 3 s $during ($info), after $(rss)"
done

echo "== 3. attach replaying a full buffer"
id=$("$sb" exec "$addr" --detach -- 'head -c 10485760 /dev/urandom | base64')
wait_exited
for i in $(seq "$runs"); do
  t0=$(now)
  "$sb" attach "$addr" "$id" >"$work/replay"
  t1=$(now)
  echo "run $i: $(wc -c <"$work/replay") bytes replayed in $(python3 -c "print(round(($t1 - $t0) * 1000))") ms"
done
