#!/usr/bin/env python3
# The hostile pass of issue 30 against the CA port, run again: one TLS
# connection opening 300 CreateCertificate streams of (4 MiB - 1) bodies with
# no token, then 500 TCP connections that never start their handshake; prints
# the CA's RSS and descriptors (from /proc) after each. Needs python's h2
# (pip install h2). Usage: hostile-ca-probe.py HOST PORT CA_PID
#   e.g. hbone-lab ca serve --listen 127.0.0.1:25012 & scripts/hostile-ca-probe.py 127.0.0.1 25012 $!
import socket, ssl, sys, time, h2.connection, h2.config, h2.events
host, port, pid = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1]) // 1024
def fds(): import os; return len(os.listdir(f"/proc/{pid}/fd"))
print("start rss MB", rss(), "fds", fds())
ctx = ssl.create_default_context(); ctx.check_hostname=False; ctx.verify_mode=ssl.CERT_NONE
ctx.set_alpn_protocols(["h2"])
s = ctx.wrap_socket(socket.create_connection((host, port)), server_hostname="localhost")
c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
c.initiate_connection(); c.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**31-1}); s.sendall(c.data_to_send())
body = b"\0" + (4*1024*1024-1-5).to_bytes(4,"big")
opened = refused = 0; s.settimeout(0.05); t0=time.time(); chunk = b"x"*16000
for i in range(300):
    try:
        sid = c.get_next_available_stream_id()
        c.send_headers(sid, [(":method","POST"),(":scheme","https"),(":authority","ca"),(":path","/istio.v1.auth.IstioCertificateService/CreateCertificate"),("content-type","application/grpc"),("te","trailers")])
        opened += 1
        sent = 0
        c.send_data(sid, body)
        while sent < 4*1024*1024-6 and c.local_flow_control_window(sid) > 16000:
            c.send_data(sid, chunk); sent += len(chunk)
        s.sendall(c.data_to_send())
    except Exception as e:
        refused += 1
    try:
        data = s.recv(65536)
        if not data: print("closed by CA after", i, "streams"); break
        for ev in c.receive_data(data):
            if isinstance(ev, h2.events.StreamReset) or isinstance(ev, h2.events.StreamEnded): pass
        s.sendall(c.data_to_send())
    except (socket.timeout, ssl.SSLWantReadError): pass
    except Exception as e: print("conn error", type(e).__name__, e); break
print(f"streams tried {opened}, errors {refused}, {time.time()-t0:.1f}s; rss MB", rss(), "fds", fds())
half = [socket.create_connection((host, port)) for _ in range(500)]
time.sleep(2); print("500 unfinished handshakes: rss MB", rss(), "fds", fds())
time.sleep(12); print("after 14 s: fds", fds())
