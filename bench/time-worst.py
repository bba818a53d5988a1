#!/usr/bin/env python3
"""The time service's worst requests, two builds side by side.

For each build (A, then B, alternating over RUNS runs), a server with only
the time service on loopback:

1. CPU per request: one client sends a request and waits for its reply,
   again and again for SECONDS; the server's CPU time (utime + stime from
   /proc/PID/stat) over the number of replies is the cost of one request,
   receive and send included (the per-source rate limit is off, or it
   would drop the closed loop's requests). Requests: `%Y` (the floor), a full datagram
   of `%c` (65,506 bytes: the worst request before requests were capped),
   512 `%c` (1,024 bytes: the worst request now) with the default reply cap
   (formatting stops early) and with a 65,507-byte reply cap (formatted in
   full).
2. Flood: one source (127.0.0.2, its own process) sends the old or the new
   worst request at 500 datagrams/s (a quarter of the default per-source
   rate limit), while another (127.0.0.1) sends 400 `%T` queries, one every
   5 ms; the second source's p50, p99 and losses, quiet and under each flood
   (a flood of `%Y`, the cheapest request, is the control: what any 500/s
   flood costs the others).

Usage: python3 bench/time-worst.py A_BIN B_BIN [SECONDS] [RUNS]
"""

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

A, B = sys.argv[1], sys.argv[2]
SECS = float(sys.argv[3]) if len(sys.argv) > 3 else 2.0
RUNS = int(sys.argv[4]) if len(sys.argv) > 4 else 3
TICK = os.sysconf("SC_CLK_TCK")

REQUESTS = {
    "%Y": b"%Y",
    "old worst (%c x 32,753)": b"%c" * 32_753,
    "new worst (%c x 512)": b"%c" * 512,
}


def serve(binary, home, cap):
    env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=home + "/.config")
    p = subprocess.Popen(
        [binary, "serve", "-q", "--allow-root", "--time", "udp://127.0.0.1:0",
         "--echo", "tcp://127.0.0.1:0", "--exec", "tcp://127.0.0.1:0",
         "--time-reply-cap", str(cap), "--udp-rate-limit", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    addr = None
    for line in p.stdout:
        words = line.split()
        if words and words[0] == "time":
            host, port = words[1].removeprefix("udp://").rsplit(":", 1)
            addr = (host, int(port))
        if line.startswith("ready"):
            break
    if addr is None:
        p.kill()
        raise SystemExit(f"{binary}: no time endpoint in the banner")
    return p, addr


def cpu_secs(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def cost(pid, addr, payload):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.connect(addr)
    s.settimeout(2)
    n, c0, end = 0, cpu_secs(pid), time.monotonic() + SECS
    while time.monotonic() < end:
        s.send(payload)
        s.recv(70_000)
        n += 1
    used = cpu_secs(pid) - c0
    s.close()
    return used / n * 1e6, n


FLOOD = """
import socket, sys, time
f = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
f.bind(("127.0.0.2", 0))
f.setblocking(False)
addr, payload = (sys.argv[1], int(sys.argv[2])), sys.argv[3].encode() * int(sys.argv[4])
t = time.monotonic()
while True:
    try:
        f.sendto(payload, addr)
    except BlockingIOError:
        pass
    try:
        while True:
            f.recv(70_000)
    except BlockingIOError:
        pass
    t += 1 / 500
    time.sleep(max(0.0, t - time.monotonic()))
"""


def probe(addr, flood):
    """p50, p99 (us) and losses of 400 `%T` queries from 127.0.0.1 while
    another process floods from 127.0.0.2 with `flood` = (unit, count),
    the request unit * count (None: quiet)."""
    flooder = None
    if flood:
        flooder = subprocess.Popen(
            [sys.executable, "-c", FLOOD, addr[0], str(addr[1]), flood[0], str(flood[1])])
        time.sleep(0.5)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.connect(addr)
    s.settimeout(0.5)
    lat, lost = [], 0
    for _ in range(400):
        t0 = time.monotonic()
        s.send(b"%T")
        try:
            s.recv(2048)
            lat.append((time.monotonic() - t0) * 1e6)
        except socket.timeout:
            lost += 1
        time.sleep(0.005)
    s.close()
    if flooder:
        flooder.kill()
        flooder.wait()
    lat.sort()
    p99 = lat[int(len(lat) * 0.99) - 1] if lat else float("nan")
    return statistics.median(lat) if lat else float("nan"), p99, lost


results = {}
for run in range(1, RUNS + 1):
    for side, binary in (("A", A), ("B", B)):
        with tempfile.TemporaryDirectory() as home:
            for cap in (1024, 65507):
                p, addr = serve(binary, home, cap)
                try:
                    for name, payload in REQUESTS.items():
                        us, n = cost(p.pid, addr, payload)
                        key = (side, f"cap {cap}, {name}: us CPU/request")
                        results.setdefault(key, []).append(us)
                        print(f"run {run} {side} cap {cap} {name}: {us:.1f} us CPU "
                              f"per request ({n} requests)", flush=True)
                    if cap == 1024:
                        for tag, flood in (("quiet", None), ("flood of %Y", ("%Y", 1)),
                                           ("flood of %c x 32,753", ("%c", 32_753)),
                                           ("flood of %c x 512", ("%c", 512))):
                            p50, p99, lost = probe(addr, flood)
                            for k, v in (("p50 us", p50), ("p99 us", p99), ("lost", lost)):
                                results.setdefault((side, f"other source, {tag}: {k}"), []).append(v)
                            print(f"run {run} {side} other source, {tag}: p50 {p50:.0f} us, "
                                  f"p99 {p99:.0f} us, lost {lost} of 400", flush=True)
                finally:
                    p.terminate()
                    p.wait()

print()
for key in sorted({k for _, k in results}):
    a = statistics.median(results[("A", key)])
    b = statistics.median(results[("B", key)])
    print(f"median {key}: A {a:.1f}, B {b:.1f}")
