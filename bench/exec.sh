#!/usr/bin/env bash
# Exec throughput, 3 runs each, against a release `switchboard serve` on
# loopback: jobs/s of `true` over one kept connection (and 4), stdout
# stream MB/s of `head -c 1G /dev/zero` with the server's peak RSS, and a
# local `sh -c true` spawn loop as a rough floor. Token and config live in
# a temporary HOME. Usage: bash bench/exec.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
cargo build --release -q
bin=$PWD/target/release/switchboard
home=$(mktemp -d)
export HOME=$home XDG_CONFIG_HOME=$home/.config
out=$home/banner
"$bin" serve -q --echo tcp://127.0.0.1:0 --time 127.0.0.1:0 --exec tcp://127.0.0.1:0 >"$out" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$home"' EXIT
for _ in $(seq 50); do grep -q '^ready' "$out" && break; sleep 0.1; done
exec_addr=$(awk '$1=="exec" && $2 ~ /^tcp:/ {sub("tcp://","",$2); print $2}' "$out")
echo "machine: $(nproc) cores, $(uname -r)"
echo "idle server RSS: $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status)"
for run in 1 2 3; do
  "$bin" bench exec "$exec_addr" --conns 1 --duration "${secs}s" --server-pid "$pid"
  "$bin" bench exec "$exec_addr" --conns 4 --duration "${secs}s"
  "$bin" bench exec-stream "$exec_addr" --bytes 1073741824 --server-pid "$pid"
  n=2000
  start=$(date +%s.%N)
  for _ in $(seq $n); do /bin/sh -c true; done
  end=$(date +%s.%N)
  echo "local bash loop of /bin/sh -c true: $(echo "$n / ($end - $start)" | bc -l | xargs printf '%.0f') spawns/s"
done
