#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/corpus/<target>/seed-* (committed; run again after a
format change). JWT seeds are signed with the fuzz HS256 secret (fuzz_targets/jwt.rs) and the
RSA fixture key (tests/fixtures/keys/rsa_private.pem, via openssl); they expire in 2100."""
import base64, hashlib, hmac, json, os, struct, subprocess, sys

ROOT = os.path.dirname(os.path.abspath(__file__))
KEYS = os.path.join(ROOT, "..", "tests", "fixtures", "keys")
SECRET = b"plexus-fuzz-hs256-secret"
EXP = 4102444800  # 2100-01-01


def write(target, name, data):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# --- codec_text: frames as phoenix.js 1.8 and the server send them -------------------------
TEXT = {
    "join": '["3","3","room:lobby","phx_join",{}]',
    "join-token": '["3","3","room:lobby","phx_join",{"token":"x","params":{"a":[1,2.5,null,true]}}]',
    "heartbeat": '[null,"7","phoenix","heartbeat",{}]',
    "push": '["3","4","room:lobby","new_msg",{"body":"hi \\"x\\" \\u00e9\\ud83d\\ude00"}]',
    "leave": '["3","5","room:lobby","phx_leave",{}]',
    "reply": '["3","3","room:lobby","phx_reply",{"status":"ok","response":{}}]',
    "broadcast": '[null,"42","room:lobby","new_msg",{"body":"hi"}]',
    "numeric-refs": '[1, 2 ,"room:lobby","ping","text payload"]',
    "refresh": '[null,"8","phoenix","refresh_token",{"token":"eyJ.x.y"}]',
    "bad-arity": '[null,"9","room:a","x"]',
}
for name, t in TEXT.items():
    write("codec_text", name, t)


# --- pusher: frames as pusher-js 8.x sends them (and a forged server event) ----------------
PUSHER = {
    "subscribe-private": {"event": "pusher:subscribe", "data": {"channel": "private-a", "auth": "key:abc"}},
    "subscribe-string-data": {"event": "pusher:subscribe", "data": json.dumps(
        {"channel": "presence-a", "auth": "k:s", "channel_data": json.dumps({"user_id": "1"})})},
    "client-event": {"event": "client-typing", "channel": "private-a", "data": {"x": "\u00e9\"q"}},
    "client-event-string": {"event": "client-s", "channel": "private-a", "data": "a \"string\""},
    "ping": {"event": "pusher:ping", "data": {}},
    "unsubscribe": {"event": "pusher:unsubscribe", "data": {"channel": "news"}},
    "forged-internal": {"event": "pusher_internal:subscription_succeeded", "channel": "a", "data": "{}"},
}
for name, frame_ in PUSHER.items():
    write("pusher", name, json.dumps(frame_, separators=(",", ":")))


# --- codec_binary: kind 0 client push, server push (0), reply (1), broadcast (2) ----------
def frame(kind, fields, payload):
    fs = [f.encode() for f in fields]
    return bytes([kind] + [len(f) for f in fs]) + b"".join(fs) + payload


write("codec_binary", "client-push", frame(0, ["3", "12", "room:lobby", "file"], b"\x00\x01\xfe\xff"))
write("codec_binary", "client-push-no-refs", frame(0, ["", "", "room:lobby", "upload"], b"payload"))
write("codec_binary", "server-push", frame(0, ["3", "room:lobby", "file"], b"\x01\x02"))
write("codec_binary", "reply", frame(1, ["3", "12", "room:lobby", "ok"], b"\x01\x02"))
write("codec_binary", "broadcast", frame(2, ["room:lobby", "new_msg"], b"\x00" * 16))
write("codec_binary", "truncated", b"\x00\x05\x00\x00\x00ab")


# --- ws_frame: [max u16 LE][n][n % 8 + 1 chunk sizes][masked client frames] ----------------
def ws(opcode, payload, fin=True, mask=b"\x37\xfa\x21\x3d"):
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([b0, 0x80 | n])
    elif n < 65536:
        head = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(c ^ mask[i % 4] for i, c in enumerate(payload))


def ws_seed(name, stream, max_message=4096, sizes=(1,)):
    write("ws_frame", name, struct.pack("<H", max_message) + bytes([len(sizes) - 1]) + bytes(sizes) + stream)


ws_seed("hello", ws(1, b"Hello"), sizes=(3,))
ws_seed("phoenix-join", ws(1, TEXT["join"].encode()), sizes=(1, 7))
ws_seed("fragmented-with-ping", ws(1, b"Hel", fin=False) + ws(9, b"ping") + ws(0, b"lo"), sizes=(2, 5, 0))
ws_seed("binary-126", ws(2, frame(0, ["3", "12", "room:lobby", "file"], bytes(range(200)))), sizes=(4, 60))
ws_seed("close-1000", ws(10, b"") + ws(8, struct.pack(">H", 1000) + b"bye"), sizes=(9,))
ws_seed("too-big", ws(2, b"x" * 300), max_message=100, sizes=(2,))
ws_seed("unmasked", bytes([0x81, 0x02]) + b"hi", sizes=(1,))
ws_seed("bad-utf8", ws(1, b"\xc3\x28"), sizes=(5,))

# --- jwt: real tokens, and header \n claims \n signature for the structured half -----------
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
js = lambda o: json.dumps(o, separators=(",", ":")).encode()


def hs256(header, claims):
    si = b64(js(header)) + "." + b64(js(claims))
    return si + "." + b64(hmac.new(SECRET, si.encode(), hashlib.sha256).digest())


def rs256(header, claims):
    si = b64(js(header)) + "." + b64(js(claims))
    sig = subprocess.run(
        ["openssl", "dgst", "-sha256", "-sign", os.path.join(KEYS, "rsa_private.pem")],
        input=si.encode(), capture_output=True, check=True).stdout
    return si + "." + b64(sig)


claims = {"sub": "alice", "roles": ["member", "staff"], "name": "Alice", "exp": EXP, "iat": 1760000000}
write("jwt", "hs256", hs256({"alg": "HS256", "typ": "JWT"}, claims))
write("jwt", "hs256-kid-info", hs256({"alg": "HS256", "typ": "JWT", "kid": "2026-11"},
                                      {"sub": "bob", "roles": "admin", "exp": EXP + 0.5, "nbf": 1, "info": {"avatar": "x"}}))
write("jwt", "rs256", rs256({"alg": "RS256", "typ": "JWT"}, claims))
write("jwt", "expired", hs256({"alg": "HS256"}, {"sub": "a", "exp": 1000}))
write("jwt", "alg-none", b64(js({"alg": "none", "typ": "JWT"})) + "." + b64(js(claims)) + ".")
write("jwt", "structured", js({"alg": "HS256", "typ": "JWT"}) + b"\n" + js(claims) + b"\nsignature")
write("jwt", "structured-rs", js({"alg": "RS256", "kid": "rsa-2026-11"}) + b"\n" + js({"sub": "", "exp": "soon"}) + b"\n")

# --- longpoll_body: what phoenix.js's LongPoll POSTs --------------------------------------
binary = base64.b64encode(frame(0, ["3", "13", "room:lobby", "file"], b"\x00\xff")).decode()
write("longpoll_body", "join-and-push", "\n".join([TEXT["join"], TEXT["push"], TEXT["heartbeat"]]) + "\n")
write("longpoll_body", "binary-crlf", TEXT["heartbeat"] + "\r\n" + binary + "\r\n\r\n")
write("longpoll_body", "garbage-line", "  " + TEXT["leave"] + "  \nnot base64 or json\n\n" + binary)
write("longpoll_body", "many-lines", (TEXT["heartbeat"] + "\n") * 6)

# --- config: TOML as docs/configuration.md writes it --------------------------------------
write("config", "prod-secret", 'jwt_secret = "change-me-to-32-random-characters"\napi_key = "change-me-too-0123456789"\n')
write("config", "dev-channels", '''profile = "dev"
listen = "127.0.0.1:4000"

[[channels]]
topic = "room:*"
push_events = ["new_msg", "typing"]
event_roles = { delete_msg = ["moderator"] }
max_per_user = 3
presence = true
history_size = 200
history_ttl_secs = 3600

[[channels]]
topic = "user:{sub}"
push_events = []
''')
doc = open(os.path.join(ROOT, "..", "docs", "configuration.md")).read()
start = doc.index("```toml\n# plexus.toml")
write("config", "docs-complete-example", doc[start + len("```toml\n"):doc.index("```", start + 7)])
write("config", "keys-and-redis", '''jwt_secret = "0123456789abcdef0123"
api_key = "api-key-0123456789"
broker = "redis"

[auth]
leeway_secs = 30
roles_claim = "groups"
jwks_files = ["jwks.json"]

[[auth.keys]]
kid = "2026-11"
algorithm = "HS384"
secret = "another-secret-0123456789"

[limits]
max_message_bytes = 1024
connect_rate_per_ip = 2.5
http_header_timeout_secs = 0

[redis]
url = "redis://127.0.0.1:6379/0"
prefix = "plexus"
node_timeout_secs = 5
''')
print("seeds written", file=sys.stderr)
