# The tutorial's looping TCP upper-case server (one client at a time, as in
# ../shared/seed), and with --threaded a ThreadingTCPServer variant in the
# tutorial's style. Usage: tutorial_server.py PORT [--threaded]
import socket, socketserver, sys

port = int(sys.argv[1])
if "--threaded" in sys.argv:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self):
            conn = self.request
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                msg = conn.recv(1024)
                if not msg:
                    break
                conn.send(msg.upper())
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.daemon_threads = True
    server = socketserver.ThreadingTCPServer(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(5)
    print("ready", flush=True)
    while True:
        conn, addr = s.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            try:
                msg = conn.recv(1024)
                if not msg:
                    break
                conn.send(msg.upper())
            except Exception:
                break
        conn.close()
