#!/usr/bin/env bash
# File transfer on loopback, side by side in one run (issue 13, item 5):
# `switchboard put` and `get` of one file against scp through a
# throwaway sshd, and iperf3's single stream as the ceiling; medians of
# RUNS runs, with the server's RSS growth during each switchboard copy.
#
#   bash bench/transfer.sh [SIZE_MIB] [RUNS]     (defaults: 1024 and 3)
#
# Then `put --hosts` of a FANOUT_MIB file (default 256) to 8 servers on
# loopback, once, and the same with `--relay`: their times and the bytes
# the client sent.
#
# Installs iperf3 and openssh-server with apt-get when missing. Every
# process started here is stopped by its PID on exit. Not run by CI.
# With RESULTS=FILE, each run is also appended to FILE as JSON lines
# (bench/compare.sh's rows).
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-1024}
runs=${2:-3}

need=()
command -v iperf3 >/dev/null || need+=(iperf3)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v scp >/dev/null || need+=(openssh-client)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q
sb=$PWD/target/release/switchboard
. bench/lib.sh

p_sb=19201 p_iperf=19202 p_ssh=19203
"$sb" serve -q --allow-root --echo none --time none --exec "tcp://127.0.0.1:$p_sb" \
  >"$work/sb.out" 2>"$work/sb.err" &
pids+=($!)
sb_pid=$!
iperf3 -s -B 127.0.0.1 -p "$p_iperf" >/dev/null 2>&1 &
pids+=($!)
throwaway_sshd "$p_ssh"
sleep 0.5
scp_opts=(-P "$p_ssh" -i "$work/client_key" -o BatchMode=yes -o StrictHostKeyChecking=no
  -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR)

mkdir -p "$work/src" "$work/up" "$work/down" "$work/scp"
head -c "$((mib << 20))" /dev/urandom >"$work/src/file"
bytes=$((mib << 20))

rss() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
# timed CMD...: seconds the command took (it must succeed).
timed() {
  local t0 t1
  t0=${EPOCHREALTIME/./}
  "$@" >/dev/null
  t1=${EPOCHREALTIME/./}
  python3 -c "print(($t1 - $t0) / 1e6)"
}
# The peak RSS of PID while CMD runs, sampled every 20 ms, in KiB.
peak_while() {
  local pid=$1; shift
  local peak=0 r
  "$@" >/dev/null &
  local c=$!
  while kill -0 "$c" 2>/dev/null; do
    r=$(rss "$pid"); [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.02
  done
  wait "$c"
  echo "$peak"
}

declare -A t
for i in $(seq "$runs"); do
  rm -f "$work/up/file" "$work/down/file" "$work/scp/file" "$work/scp/back"
  base=$(rss "$sb_pid")
  t0=${EPOCHREALTIME/./}
  peak=$(peak_while "$sb_pid" "$sb" put "127.0.0.1:$p_sb" "$work/src/file" "$work/up/")
  t1=${EPOCHREALTIME/./}
  t[put,$i]=$(python3 -c "print(($t1 - $t0) / 1e6)")
  t[putrss,$i]=$((peak - base))
  cmp -s "$work/src/file" "$work/up/file"
  base=$(rss "$sb_pid")
  t0=${EPOCHREALTIME/./}
  # Both gets fetch the source file, which every run has in the page
  # cache: a put written past the cache (O_DIRECT) would otherwise make
  # switchboard's get read the disk and scp's read memory.
  peak=$(peak_while "$sb_pid" "$sb" get "127.0.0.1:$p_sb" "$work/src/file" "$work/down/")
  t1=${EPOCHREALTIME/./}
  t[get,$i]=$(python3 -c "print(($t1 - $t0) / 1e6)")
  t[getrss,$i]=$((peak - base))
  cmp -s "$work/src/file" "$work/down/file"
  t[scpput,$i]=$(timed scp "${scp_opts[@]}" "$work/src/file" "root@127.0.0.1:$work/scp/file")
  t[scpget,$i]=$(timed scp "${scp_opts[@]}" "root@127.0.0.1:$work/src/file" "$work/scp/back")
  t[iperf,$i]=$(iperf3 -c 127.0.0.1 -p "$p_iperf" -n "$bytes" -J 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/8e6)')
done

# put --hosts to 8 servers on loopback (each its own root) of a file of
# FANOUT_MIB (default 256): the time, and the bytes the client sent.
fan_mib=${FANOUT_MIB:-256}
head -c "$((fan_mib << 20))" /dev/urandom >"$work/src/fan"
hosts=()
for i in $(seq 8); do
  mkdir -p "$work/fan$i"
  port=$((19210 + i))
  "$sb" serve -q --allow-root --echo none --time none --exec "tcp://127.0.0.1:$port" \
    --files-root "$work/fan$i" >"$work/fan$i.out" 2>"$work/fan$i.err" &
  pids+=($!)
  hosts+=("127.0.0.1:$port")
done
sleep 1
t0=${EPOCHREALTIME/./}
"$sb" put --json --hosts "$(IFS=,; echo "${hosts[*]}")" "$work/src/fan" "fan" >"$work/fan.jsonl"
t1=${EPOCHREALTIME/./}
fan_secs=$(python3 -c "print(($t1 - $t0) / 1e6)")
fan_sent=$(python3 -c "import json,sys; print(sum(json.loads(l)['sent'] for l in open(sys.argv[1])))" "$work/fan.jsonl")
for i in $(seq 8); do cmp -s "$work/src/fan" "$work/fan$i/fan"; done
# The same with --relay (a chain: each host passes the file on).
for i in $(seq 8); do rm -f "$work/fan$i/fan"; done
t0=${EPOCHREALTIME/./}
"$sb" put --json --relay --hosts "$(IFS=,; echo "${hosts[*]}")" "$work/src/fan" "fan" >"$work/relay.jsonl"
t1=${EPOCHREALTIME/./}
relay_secs=$(python3 -c "print(($t1 - $t0) / 1e6)")
relay_sent=$(python3 -c "import json,sys; print(sum(json.loads(l)['sent'] for l in open(sys.argv[1])))" "$work/relay.jsonl")
for i in $(seq 8); do cmp -s "$work/src/fan" "$work/fan$i/fan"; done

python3 - "$bytes" "$runs" <<PY
import statistics, sys
bytes_, runs = int(sys.argv[1]), int(sys.argv[2])
t = {$(for k in "${!t[@]}"; do printf '"%s": %s, ' "$k" "${t[$k]}"; done)}
def med(name): return statistics.median(t[f"{name},{i}"] for i in range(1, runs + 1))
mbs = lambda s: bytes_ / 1e6 / s
iperf = med("iperf")
rows = [
    ("put", mbs(med("put")), mbs(med("scpput")), med("putrss")),
    ("get", mbs(med("get")), mbs(med("scpget")), med("getrss")),
]
print(f"file {bytes_ >> 20} MiB, medians of {runs}; iperf3 single stream {iperf:,.0f} MB/s")
print("| copy | switchboard MB/s | scp MB/s | vs iperf3 | vs scp | server RSS growth |")
print("|---|---|---|---|---|---|")
for name, sb, scp, rss in rows:
    print(f"| {name} | {sb:,.0f} | {scp:,.0f} | {sb / iperf:.2f} | {sb / scp:.2f} | {rss / 1024:.1f} MiB |")
fan_bytes = $fan_mib << 20
print(f"put --hosts, 8 servers, {$fan_mib} MiB: {$fan_secs:.2f} s, client sent {$fan_sent / fan_bytes:.2f}x the file ({$fan_sent:,} bytes)")
print(f"put --hosts --relay, the same: {$relay_secs:.2f} s, client sent {$relay_sent / fan_bytes:.2f}x the file ({$relay_sent:,} bytes)")
# For bench/compare.sh: every run as one JSON line, its rows beside the rest.
import json, os
if os.environ.get("RESULTS"):
    with open(os.environ["RESULTS"], "a") as f:
        for i in range(1, runs + 1):
            for label, sb, scp in (("put", "put", "scpput"), ("get", "get", "scpget")):
                for peer, v in (("switchboard", mbs(t[f"{sb},{i}"])), ("scp", mbs(t[f"{scp},{i}"])),
                                ("iperf3", t[f"iperf,{i}"])):
                    row = {"label": f"{label} of a {bytes_ >> 20} MiB file", "peer": peer, "raw": {"mb_per_sec": v}}
                    f.write(json.dumps(row) + "\n")
PY
