#!/usr/bin/env bash
# Fan-out on loopback (issues 12 and 18): `switchboard exec --hosts --json`
# of JOB (default `true`) to HOSTS addresses of one server listening on
# 0.0.0.0 and reached as 127.0.X.Y (X from 0, Y 1-250), RUNS times; wall
# time, hosts that succeeded and the client's peak RSS. A chatty JOB
# (`yes | head -c 1048576`) shows what the client keeps: --json keeps
# 1 MiB per host, 64 MiB over all hosts past 64 of them, and asks the
# servers for no more. The server's per-source and handshake limits are
# raised for the run (every connection comes from 127.0.0.1): the config
# is printed. Each host's key is trusted on first use into a known_hosts
# file made fresh for each run, so every run pays for it.
#
#   bash bench/fanout.sh [HOSTS] [RUNS] [FANOUT] [JOB]   (defaults: 1000, 3, 32, true)
#   SB=OTHER_BINARY bash bench/fanout.sh ...         (another build, both sides)
#
# With RESULTS=FILE, each run is appended to FILE as a JSON line
# (bench/compare.sh's row). Every process started here is stopped by its
# PID on exit. Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000}
runs=${2:-3}
fanout=${3:-32}
job=${4:-true}
cargo build --release -q
sb=${SB:-$PWD/target/release/switchboard}
. bench/lib.sh

port=19301
cat >"$work/fanout.toml" <<CFG
[exec]
max_connections = 4096
max_connections_per_source = 0
max_startups = "4096:100:4096"
max_unauthenticated_per_source = 4096
unauthenticated_penalty = "0s"
max_jobs = 4096
CFG
echo "server config for the run:"
sed 's/^/  /' "$work/fanout.toml"
"$sb" serve -q --allow-root --config "$work/fanout.toml" --echo none --time none \
  --exec "tcp://0.0.0.0:$port" --allow-plaintext \
  >"$work/sb.out" 2>"$work/sb.err" &
pids+=($!)
sleep 1

# HOSTS addresses as a pdsh list: 127.0.X.[1-250] per block of 250.
hosts=""
left=$n x=0
while [ "$left" -gt 0 ]; do
  take=$((left < 250 ? left : 250))
  hosts+="${hosts:+,}127.0.$x.[1-$take]:$port"
  left=$((left - take)) x=$((x + 1))
done

for i in $(seq "$runs"); do
  rm -f "$work/known_hosts"
  t0=${EPOCHREALTIME/./}
  /usr/bin/time -f "%M" -o "$work/rss" "$sb" exec --known-hosts "$work/known_hosts" \
    --fanout "$fanout" --json --hosts "$hosts" -- "$job" >"$work/out.jsonl" 2>"$work/client.err" || true
  t1=${EPOCHREALTIME/./}
  ok=$(grep -c '"exit_code":0' "$work/out.jsonl" || true)
  secs=$(python3 -c "print(($t1 - $t0) / 1e6)")
  echo "run $i: $job, $n hosts, $ok ok, $secs s, client peak RSS $(cat "$work/rss") KiB"
  if [ -n "${RESULTS:-}" ]; then
    echo "{\"label\":\"fan-out exec --hosts '$job', $n hosts\",\"peer\":\"switchboard\",\"raw\":{\"secs\":$secs,\"ok\":$ok,\"rss_kib\":$(cat "$work/rss")}}" >>"$RESULTS"
    echo "{\"label\":\"fan-out exec --hosts '$job', $n hosts: client RSS\",\"peer\":\"switchboard\",\"raw\":{\"rss_mib\":$(($(cat "$work/rss") / 1024))}}" >>"$RESULTS"
  fi
  [ "$ok" -eq "$n" ] || { echo "not every host answered:"; tail -3 "$work/client.err"; }
done
