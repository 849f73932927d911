"""Open N TLS connections to ADDR:PORT with SNI NAME and ALPN PROTO, leave them idle, print
"open", and close them all when stdin gets a line. h2: the client preface and an empty SETTINGS
(plus the ACK of the server's) are sent, as a real client would before going idle. REQUESTS=1:
one GET is sent and its whole answer read before the connection idles (h2: on stream 1, its
headers in HPACK without Huffman or indexing, so no decoder is needed here)."""
import socket, ssl, struct, sys
addr, port, name, proto, n = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
requests = int(sys.argv[6]) if len(sys.argv) > 6 else 0
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols([proto])
preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]) + bytes([0, 0, 0, 4, 1, 0, 0, 0, 0])

def one_request(s, i):
    s.sendall(f"GET / HTTP/1.1\r\nHost: {name}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            sys.exit(f"connection {i}: closed before the response head")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = [int(l.split(b":", 1)[1]) for l in head.split(b"\r\n")[1:] if l.lower().startswith(b"content-length:")]
    if not head.startswith(b"HTTP/1.1 200") or not length:
        sys.exit(f"connection {i}: unexpected response head {head[:200]!r}")
    if len(body) < length[0]:
        read_exact(s, length[0] - len(body), i, "the response body")

def read_exact(s, size, i, what="the h2 response ended"):
    data = b""
    while len(data) < size:
        chunk = s.recv(size - len(data))
        if not chunk:
            sys.exit(f"connection {i}: closed before {what}")
        data += chunk
    return data

def first_field(payload, flags):
    """The first byte of a HEADERS frame's first header field: 0x88 is :status 200 (static
    entry 8), which every candidate here sends indexed. Padding, priority and dynamic table
    size updates are passed over."""
    if flags & 0x08:
        payload = payload[1 : len(payload) - payload[0]]
    if flags & 0x20:
        payload = payload[5:]
    pos = 0
    while pos < len(payload) and payload[pos] & 0xE0 == 0x20:
        pos += 1
        if payload[pos - 1] & 0x1F == 0x1F:
            while pos < len(payload) and payload[pos] & 0x80:
                pos += 1
            pos += 1
    return payload[pos] if pos < len(payload) else None

def one_h2_request(s, i):
    # :method GET, :scheme https, :path / (static table entries 2, 7, 4), then :authority as a
    # literal without indexing (name: static entry 1).
    host = name.encode()
    block = bytes([0x82, 0x87, 0x84, 0x01, len(host)]) + host
    s.sendall(struct.pack(">I", len(block))[1:] + bytes([1, 0x05]) + struct.pack(">I", 1) + block)
    status_ok = False
    for _ in range(100):
        head = read_exact(s, 9, i)
        length, kind, flags = struct.unpack(">I", b"\0" + head[:3])[0], head[3], head[4]
        stream = struct.unpack(">I", head[5:])[0] & 0x7FFFFFFF
        payload = read_exact(s, length, i)
        if kind == 7:
            sys.exit(f"connection {i}: GOAWAY {payload[:8].hex()}")
        if stream != 1:
            continue
        if kind == 1:
            status_ok = first_field(payload, flags) == 0x88
        if kind in (0, 1) and flags & 0x01:
            if not status_ok:
                sys.exit(f"connection {i}: the response was not a 200")
            return
    sys.exit(f"connection {i}: no end of the h2 response within 100 frames")

conns = []
for i in range(n):
    s = ctx.wrap_socket(socket.create_connection((addr, port), timeout=10), server_hostname=name)
    if s.selected_alpn_protocol() != proto:
        sys.exit(f"connection {i}: ALPN {s.selected_alpn_protocol()!r}, not {proto}")
    if proto == "h2":
        s.sendall(preface)
    for _ in range(requests):
        (one_h2_request if proto == "h2" else one_request)(s, i)
    conns.append(s)
print("open", flush=True)
sys.stdin.readline()
