"""An independent switchboard/1 client written from PROTOCOL.md §3 alone
(standard library only). Usage: native_client.py PORT TOKEN_FILE CMD
Prints the job's stdout and stderr as they come and exits with its code
(128+N for signal N)."""
import hashlib, hmac, json, os, signal, socket, struct, sys

def send(sock, header, body=b""):
    if body:
        header = dict(header, size=len(body))
    raw = json.dumps(header).encode()
    sock.sendall(struct.pack(">I", len(raw)) + raw + body)

def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data

def recv(sock):
    (h,) = struct.unpack(">I", recv_exact(sock, 4))
    header = json.loads(recv_exact(sock, h))
    body = recv_exact(sock, header.get("size", 0))
    return header, body

def mac(token, label, sn, cn):
    msg = f"switchboard/1 {label} {sn} {cn}".encode()
    return hmac.new(token.encode(), msg, hashlib.sha256).hexdigest()

port, token_file, cmd = int(sys.argv[1]), sys.argv[2], sys.argv[3]
token = open(token_file).read().strip()
sock = socket.create_connection(("127.0.0.1", port))
hello, _ = recv(sock)
assert hello["type"] == "hello" and hello["version"] == 1 and hello["auth"] == "hmac-sha256", hello
sn, cn = hello["nonce"], os.urandom(32).hex()
send(sock, {"type": "auth", "version": 1, "nonce": cn, "mac": mac(token, "client", sn, cn)})
ready, _ = recv(sock)
assert ready["type"] == "ready", ready
assert hmac.compare_digest(ready["mac"], mac(token, "server", sn, cn)), "server MAC wrong"
send(sock, {"type": "exec", "id": 1, "cmd": cmd, "stdin": True})
send(sock, {"type": "stdin", "id": 1}, b"from python stdin\n")
send(sock, {"type": "eof", "id": 1})
while True:
    header, body = recv(sock)
    kind = header["type"]
    if kind == "started":
        assert header["id"] == 1 and header["pid"] > 1
    elif kind == "stdout":
        sys.stdout.buffer.write(body)
    elif kind == "stderr":
        sys.stderr.buffer.write(body)
    elif kind == "exit":
        sys.stdout.flush()
        if "code" in header:
            sys.exit(header["code"])
        sys.exit(128 + getattr(signal, "SIG" + header["signal"]).value)
    else:
        sys.exit(f"unexpected frame {header}")
