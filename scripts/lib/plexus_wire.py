"""Minimal clients for the measuring scripts (Python 3 standard library only): Redis over
RESP2 (counting the bytes it sends and receives), a Phoenix V2 WebSocket client with HS256
tokens, and process helpers. Used by scripts/redis-commands."""

import base64
import hashlib
import hmac
import json
import os
import socket
import struct
import time
import urllib.request

class Fail(Exception):
    pass


class Resp:
    def __init__(self, host, port, password=None):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.file = self.sock.makefile("rb")
        self.sent = self.recvd = 0  # bytes of our own requests and replies
        if password:
            self.call("AUTH", password)

    @staticmethod
    def _encode(*args):
        out = b"*%d\r\n" % len(args)
        for a in args:
            a = a if isinstance(a, bytes) else str(a).encode()
            out += b"$%d\r\n%s\r\n" % (len(a), a)
        return out

    def call(self, *args):
        out = self._encode(*args)
        self.sock.sendall(out)
        self.sent += len(out)
        return self._read()

    def pipeline(self, commands):
        """Sends the commands in one write and returns their replies."""
        out = b"".join(self._encode(*c) for c in commands)
        self.sock.sendall(out)
        self.sent += len(out)
        return [self._read() for _ in commands]

    def _read(self):
        line = self.file.readline()
        if not line:
            raise Fail("redis closed the connection")
        self.recvd += len(line)
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise Fail("redis: " + rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            self.recvd += n + 2
            return self.file.read(n + 2)[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise Fail("redis: unexpected reply %r" % line)


def token(sub, secret):
    def b64(d):
        return base64.urlsafe_b64encode(d).rstrip(b"=")

    head = b64(b'{"alg":"HS256","typ":"JWT"}')
    body = b64(json.dumps({"sub": sub, "exp": int(time.time()) + 3600}).encode())
    sig = b64(hmac.new(secret.encode(), head + b"." + body, hashlib.sha256).digest())
    return (head + b"." + body + b"." + sig).decode()


class Ws:
    def __init__(self, port, sub, secret):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall(
            (
                f"GET /socket/websocket?vsn=2.0.0&token={token(sub, secret)} HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                raise Fail("connection closed during the handshake")
            buf += chunk
        head, self.buf = buf.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise Fail("refused: " + head.decode(errors="replace").splitlines()[0])
        self.sock, self.ref, self.got = s, 0, {}
        self.replies = {}

    def push(self, topic, event, payload, join_ref=None):
        self.ref += 1
        ref = str(self.ref)
        data = json.dumps([join_ref, ref, topic, event, payload]).encode()
        n = len(data)
        head = b"\x81" + (bytes([0x80 | n]) if n < 126 else bytes([0xFE]) + struct.pack(">H", n))
        mask = os.urandom(4)
        self.sock.settimeout(10)
        body = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.sock.sendall(head + mask + body)
        return ref

    def _frames(self):
        """Complete frames in the buffer (unmasked, from the server)."""
        while len(self.buf) >= 2:
            op, n, at = self.buf[0] & 0x0F, self.buf[1] & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n, at = struct.unpack(">H", self.buf[2:4])[0], 4
            elif n == 127:
                if len(self.buf) < 10:
                    return
                n, at = struct.unpack(">Q", self.buf[2:10])[0], 10
            if len(self.buf) < at + n:
                return
            data, self.buf = self.buf[at : at + n], self.buf[at + n :]
            if op == 1:
                msg = json.loads(data)
                if msg[3] == "phx_reply":
                    self.replies[msg[1]] = msg[4]
                else:
                    k = (msg[2], msg[3])
                    self.got[k] = self.got.get(k, 0) + 1
            elif op == 8:
                raise Fail("the server closed a connection: %r" % data[2:])

    def pump(self, wait):
        """Reads what is there (waiting up to `wait` s for something)."""
        self.sock.settimeout(wait)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise Fail("connection closed by the server")
                self.buf += chunk
                self._frames()
                self.sock.settimeout(0)
        except (BlockingIOError, socket.timeout):
            pass

    def reply(self, ref, deadline):
        while ref not in self.replies:
            if time.time() > deadline:
                raise Fail("no reply to ref %s" % ref)
            self.pump(0.2)
        r = self.replies.pop(ref)
        if r.get("status") != "ok":
            raise Fail("refused: %r" % r)
        return r


# ---------------------------------------------------------------- processes
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, secs=15):
    end = time.time() + secs
    while time.time() < end:
        try:
            if check():
                return
        except (OSError, Fail, ValueError):
            pass
        time.sleep(0.1)
    raise Fail(f"{what} did not come up within {secs} s")


def health(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
        return json.loads(r.read())
