#!/usr/bin/env bash
# Side-by-side comparison on loopback, in one run: the same load from
# `switchboard bench` against switchboard and its peers; medians of RUNS
# runs with min-max and ratios. Rewrites the generated table in
# docs/BENCHMARKS.md (between its compare:begin/end markers) and prints it.
#
#   bash bench/compare.sh [SECONDS] [RUNS]      (defaults: 5 and 3)
#
# Peers: the minimal tokio echo server and the blocking std TCP/UDP echo
# (bench/peers, built as cargo examples), the tutorial's Python server and
# a threaded variant, socat and ncat with `stdbuf -o0 tr a-z A-Z`, iperf3
# (stream ceiling), a local `sh -c true` spawn loop (exec's floor), the
# same spawn per request of a minimal blocking TCP server (spawn_echo: the
# floor of any job over a socket) and a minimal pipe-to-socket relay
# (pipe_relay: the floor of a job's output stream);
# then bench/fanout.sh (1,000 hosts) and bench/transfer.sh (put/get).
# Installs socat, ncat and iperf3 with apt-get when missing. Every server
# started here is stopped by its PID on exit. Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}
runs=${2:-3}
out_md=docs/BENCHMARKS.md

need=()
for t in socat ncat iperf3; do command -v "$t" >/dev/null || need+=("$t"); done
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null || need+=(openssh-client)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release -q
cargo build --release -q --examples
sb=$PWD/target/release/switchboard
ex=$PWD/target/release/examples
. bench/lib.sh
[ -n "${COMPARE_DEBUG:-}" ] && trap 'cp "$work"/*.err "$work"/results.jsonl /tmp/cmpdebug/ 2>/dev/null; cleanup' EXIT

# start NAME CMD...: runs a server in the background, remembers its PID.
start() {
  local name=$1; shift
  "$@" >"$work/$name.out" 2>"$work/$name.err" &
  pids+=($!)
  sleep 0.5
}

# Fixed loopback ports, one per server (the peers take an address).
p_sb=19101 p_sbx=19102 p_tokio=19103 p_std=19104 p_stdu=19105 p_py=19106
p_pyt=19107 p_socat=19108 p_ncat=19109 p_iperf=19110 p_ssh=19111 p_spe=19112

start switchboard "$sb" serve -q --allow-root --echo "127.0.0.1:$p_sb" --time 127.0.0.1:0 \
  --exec "tcp://127.0.0.1:$p_sbx" --udp-rate-limit 0 --max-connections-per-source 0
sb_pid=${pids[-1]}
start tokio "$ex/tokio_echo" "127.0.0.1:$p_tokio"
start std "$ex/std_echo" tcp "127.0.0.1:$p_std"
start stdudp "$ex/std_echo" udp "127.0.0.1:$p_stdu"
start python python3 bench/peers/tutorial_server.py "$p_py"
start pythreaded python3 bench/peers/tutorial_server.py "$p_pyt" --threaded
start socat socat "TCP-LISTEN:$p_socat,fork,reuseaddr,bind=127.0.0.1" EXEC:"stdbuf -o0 tr a-z A-Z"
start ncat ncat -k -l 127.0.0.1 "$p_ncat" --sh-exec "stdbuf -o0 tr a-z A-Z"
start spawnecho "$ex/spawn_echo" "127.0.0.1:$p_spe"
start iperf iperf3 -s -B 127.0.0.1 -p "$p_iperf"
# A throwaway sshd on a loopback high port (bench/lib.sh).
throwaway_sshd "$p_ssh"
ssh_opts=(-p "$p_ssh" -i "$work/client_key" -o BatchMode=yes -o StrictHostKeyChecking=no
  -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR)
ssh_cm=(-o ControlMaster=auto -o "ControlPath=$work/cm-%r@%h:%p" -o ControlPersist=120)

results=$work/results.jsonl
: >"$results"
# measure LABEL PEER MODE ARGS...: RUNS runs of one bench, JSON lines tagged.
measure() {
  local label=$1 peer=$2; shift 2
  for _ in $(seq "$runs"); do
    if r=$("$sb" bench "$@" --json 2>/dev/null); then
      echo "{\"label\":\"$label\",\"peer\":\"$peer\",\"r\":$r}" >>"$results"
    else
      echo "{\"label\":\"$label\",\"peer\":\"$peer\",\"failed\":true}" >>"$results"
    fi
  done
}

for c in 16 256 1000; do
  for peer in switchboard:$p_sb tokio:$p_tokio std:$p_std; do
    measure "echo 64 B, $c conns" "${peer%%:*}" echo "127.0.0.1:${peer##*:}" --conns $c --size 64 --duration "${secs}s"
  done
done
for peer in pythreaded:$p_pyt socat:$p_socat ncat:$p_ncat; do
  measure "echo 64 B, 16 conns" "${peer%%:*}" echo "127.0.0.1:${peer##*:}" --conns 16 --size 64 --duration "${secs}s"
done
for peer in switchboard:$p_sb python:$p_py; do
  measure "echo 64 B, 1 conn" "${peer%%:*}" echo "127.0.0.1:${peer##*:}" --conns 1 --size 64 --duration "${secs}s"
done
for peer in switchboard:$p_sb tokio:$p_tokio std:$p_std; do
  measure "stream 64 KiB writes, 1 conn" "${peer%%:*}" stream "127.0.0.1:${peer##*:}" --bytes 2147483648
done
for peer in switchboard:$p_sb std:$p_stdu; do
  measure "UDP echo 32 B, 16 sockets" "${peer%%:*}" udp-echo "127.0.0.1:${peer##*:}" --conns 16 --size 32 --duration "${secs}s"
done
measure "exec true, 1 kept conn" switchboard exec "127.0.0.1:$p_sbx" --conns 1 --duration "${secs}s"
measure "exec true, 1 conn, 8 jobs in flight" switchboard exec "127.0.0.1:$p_sbx" --conns 1 --inflight 8 --duration "${secs}s"
measure "exec true, 1 kept conn" "spawn per request over TCP (spawn_echo)" echo "127.0.0.1:$p_spe" --conns 1 --size 64 --duration "${secs}s"
measure "exec, fresh conn + handshake + job" switchboard exec-connect "127.0.0.1:$p_sbx" --conns 1 --duration "${secs}s"
# ncat --sh-exec spawns `tr` per connection (no authentication): the
# nearest thing to a fresh connection + job without a protocol.
measure "exec, fresh conn + handshake + job" "ncat --sh-exec (no auth)" connect "127.0.0.1:$p_ncat" --conns 1 --duration "${secs}s"
measure "exec stdout stream, head -c 1G" switchboard exec-stream "127.0.0.1:$p_sbx" --bytes 1073741824
measure "idle echo conns (10,000)" switchboard idle "127.0.0.1:$p_sb" --conns 10000 --duration 2s --server-pid "$sb_pid"

# jobs/s of `ssh host true` for SECONDS: fresh connections, or over a
# ControlMaster connection (set up once before timing).
ssh_rate() {
  local n=0 start now
  start=${EPOCHREALTIME/./}
  now=$start
  while [ $((now - start)) -lt $((secs * 1000000)) ]; do
    ssh "${ssh_opts[@]}" "$@" root@127.0.0.1 true || return 1
    n=$((n + 1))
    now=${EPOCHREALTIME/./}
  done
  python3 -c "print($n * 1e6 / ($now - $start))"
}
ssh "${ssh_opts[@]}" "${ssh_cm[@]}" root@127.0.0.1 true || true
# The ControlMaster outlives this script (ControlPersist) unless told.
stop_master() { ssh "${ssh_opts[@]}" "${ssh_cm[@]}" -O exit root@127.0.0.1 2>/dev/null || true; }
trap 'stop_master; [ -n "${COMPARE_DEBUG:-}" ] && cp "$work"/*.err "$work"/results.jsonl /tmp/cmpdebug/ 2>/dev/null; cleanup' EXIT

# The floors and ceilings measured outside `switchboard bench`.
for _ in $(seq "$runs"); do
  if r=$(ssh_rate "${ssh_cm[@]}"); then
    echo "{\"label\":\"exec true, 1 kept conn\",\"peer\":\"ssh ControlMaster\",\"raw\":{\"spawns_per_sec\":$r}}" >>"$results"
  fi
  if r=$(ssh_rate); then
    echo "{\"label\":\"exec, fresh conn + handshake + job\",\"peer\":\"ssh (fresh)\",\"raw\":{\"spawns_per_sec\":$r}}" >>"$results"
  fi
  "$ex/spawn_loop" "$secs" true | sed 's/^/{"label":"exec true, 1 kept conn","peer":"local spawn loop","raw":/; s/$/}/' >>"$results"
  # iperf3 is the ceiling of both streams: one line for each row.
  iperf3 -c 127.0.0.1 -p "$p_iperf" -t "$secs" -J 2>/dev/null \
    | python3 -c 'import json,sys; d=json.load(sys.stdin); r={"mb_per_sec":d["end"]["sum_received"]["bits_per_second"]/8e6}
for l in ("stream 64 KiB writes, 1 conn", "exec stdout stream, head -c 1G"): print(json.dumps({"label":l,"peer":"iperf3","raw":r}))' >>"$results" 2>/dev/null || true
  "$ex/pipe_relay" 1073741824 | sed 's/^/{"label":"exec stdout stream, head -c 1G","peer":"pipe relay (pipe_relay)","raw":/; s/$/}/' >>"$results"
done

# exec --hosts to 1,000 and 10,000 addresses of one server (bench/fanout.sh):
# `true`, and a job printing 1 MiB.
for n in 1000 10000; do
  for job in true "yes | head -c 1048576"; do
    RESULTS="$results" bash bench/fanout.sh "$n" "$runs" 32 "$job" >&2 || echo "bench/fanout.sh $n failed" >&2
  done
done

# put and get of a 1 GiB file against scp and iperf3 (bench/transfer.sh).
RESULTS="$results" bash bench/transfer.sh 1024 "$runs" >&2 || echo "bench/transfer.sh failed" >&2

python3 - "$results" "$out_md" "$secs" "$runs" <<'PY'
import json, statistics, sys, subprocess, platform
path, out, secs, runs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
rows = {}
def cell(t):
    return t.replace("|", "\\|")  # a job's pipe in a label
for line in open(path):
    d = json.loads(line)
    key = (d["label"], d["peer"])
    if d.get("failed"):
        rows.setdefault(key, [])
        continue
    r = d.get("r") or d.get("raw")
    if "spawns_per_sec" in r:
        v, unit = r["spawns_per_sec"], "jobs/s"
    elif r.get("mb_per_sec") is not None:
        v, unit = r["mb_per_sec"], "MB/s"
    elif "secs" in r:
        v, unit = r["secs"], "s"
    elif "rss_mib" in r:
        v, unit = r["rss_mib"], "MiB"
    elif r.get("mode") == "idle":
        a, b = r.get("server_rss_kib_before"), r.get("server_rss_kib_after")
        if a is None or b is None:
            rows.setdefault(key, [])
            continue
        v, unit = (b - a) / r["conns"], "KiB RSS/conn"
    else:
        v, unit = r["requests_per_sec"], "req/s"
    rows.setdefault(key, []).append((v, unit, r.get("p99_us")))
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
lines = [
    f"Generated by `bash bench/compare.sh {secs} {runs}`: {runs} runs of {secs} s per cell, client and server",
    f"on the same machine ({subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, {cpu}, Linux {platform.release()}).",
    "Median, min-max over the runs, and the ratio of switchboard's median to each peer's.", "",
    "| load | peer | median | min-max | p99 (median run) | switchboard / peer |", "|---|---|---|---|---|---|",
]
labels = []
for (label, peer) in rows:
    if label not in labels:
        labels.append(label)
for label in labels:
    sb = rows.get((label, "switchboard"), [])
    sb_med = statistics.median([v for v, _, _ in sb]) if sb else None
    for (l, peer), vals in rows.items():
        if l != label:
            continue
        if not vals:
            lines.append(f"| {cell(label)} | {cell(peer)} | failed | | | |")
            continue
        vs = sorted(v for v, _, _ in vals)
        med = statistics.median(vs)
        unit = vals[0][1]
        p99s = sorted(vals, key=lambda t: t[0])[len(vals) // 2][2]
        ratio = "" if peer == "switchboard" or sb_med is None or med == 0 else f"{sb_med / med:.2f}x"
        p99 = f"{p99s} us" if p99s else ""
        lines.append(f"| {cell(label)} | {cell(peer)} | {med:,.1f} {unit} | {vs[0]:,.1f}-{vs[-1]:,.1f} | {p99} | {ratio} |")
table = "\n".join(lines) + "\n"
doc = open(out).read()
begin, end = "<!-- compare:begin -->\n", "<!-- compare:end -->"
if begin in doc and end in doc:
    doc = doc.split(begin, 1)[0] + begin + table + end + doc.split(end, 1)[1]
else:
    doc += "\n## Side by side, generated\n\n" + begin + table + end + "\n"
open(out, "w").write(doc)
print(table)
PY
