#!/usr/bin/env bash
# Echo and time throughput/latency and server memory, 3 runs each, against a
# release `switchboard serve` on loopback (client and server share the
# machine). Prints every run; docs/BENCHMARKS.md quotes the medians.
# Usage: bash bench/foundation.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
cargo build --release -q
bin=target/release/switchboard
out=$(mktemp)
# No UDP rate limit: the load comes from one source address.
"$bin" serve -q --echo 127.0.0.1:0 --time 127.0.0.1:0 --udp-rate-limit 0 >"$out" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$out"' EXIT
for _ in $(seq 50); do grep -q '^ready' "$out" && break; sleep 0.1; done
tcp=$(awk '$1=="echo" && $2 ~ /^tcp:/ {sub("tcp://","",$2); print $2}' "$out")
udp=$(awk '$1=="echo" && $2 ~ /^udp:/ {sub("udp://","",$2); print $2}' "$out")
time=$(awk '$1=="time" {sub("udp://","",$2); print $2}' "$out")
echo "machine: $(nproc) cores, $(uname -r), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "idle server RSS: $(awk '/VmRSS/ {print $2, $3}' /proc/$pid/status)"
for run in 1 2 3; do
  for c in 16 256 1000; do
    "$bin" bench echo "$tcp" --conns "$c" --size 64 --duration "${secs}s" --server-pid "$pid"
  done
  "$bin" bench udp-echo "$udp" --conns 16 --size 32 --duration "${secs}s"
  "$bin" bench udp-time "$time" --conns 16 --duration "${secs}s"
done
