#!/usr/bin/env python3
"""chfront: the subset of ClickHouse's HTTP interface that the Rust `clickhouse`
crate uses, served over chDB (ClickHouse embedded in-process). Dev/test only.

    python3 dev/chfront.py --host 127.0.0.1 --port 18123 --data DIR [--user U --password P]
                           [--tls-cert CERT.pem --tls-key KEY.pem]   # HTTPS instead of HTTP

Served: GET /ping and GET / -> "Ok."; queries from the POST body, the `query` URL
parameter (URL query + "\\n" + body, as ClickHouse does for INSERT data) or a
multipart/form-data body; `param_NAME` query parameters ({name:Type}, passed to chDB
natively); every other non-reserved URL parameter is a setting; `database`;
`default_format` (TabSeparated by default); INSERT data streamed into chDB
(`send_insert`); SELECT results streamed chunk by chunk; `decompress=1` (ClickHouse
compressed blocks: CityHash128 v1.0.2 + LZ4) on request bodies; `compress=1` (same
framing) or `Accept-Encoding: lz4|gzip|deflate` (HTTP compression) on responses;
auth via X-ClickHouse-User/Key, HTTP basic or user/password URL parameters;
`session_id`. Errors: HTTP 500 (401 for auth) with the message and the
X-ClickHouse-Exception-Code header; errors after streaming started use the
X-ClickHouse-Exception-Tag framing of ClickHouse 25.11+.

Isolation: every request runs on a fresh chDB connection (cheap: ~1 ms), so URL
settings, `database`, and SET/USE inside a query never leak into other requests.
Requests carrying a `session_id` share that session's connection instead, so
there SET/USE (and URL settings) persist for the session, as in ClickHouse sessions.
"""
import argparse, base64, hmac, json, logging, os, re, secrets, signal, string, struct
import ssl, sys, threading, time, uuid, zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import chdb.state
import lz4.block
import lz4.frame
from clickhouse_cityhash.cityhash import CityHash128

log = logging.getLogger("chfront")
# URL parameters with HTTP-level meaning; everything else is a query setting.
RESERVED = {"query", "database", "default_format", "user", "password", "quota_key", "query_id",
            "session_id", "session_timeout", "session_check", "compress", "decompress",
            "buffer_size", "wait_end_of_query", "role", "stacktrace", "close_session",
            "enable_http_compression", "http_zlib_compression_level",
            "http_native_compression_disable_checksumming_on_decompress"}
# Row-streamable output formats (no footer/statistics that would be wrong per chunk).
STREAMABLE = re.compile(r"(?i)^(RowBinary|TabSeparated|TSV|CSV|JSONEachRow|JSONStringsEachRow|"
                        r"JSONCompactEachRow|JSONCompactStringsEachRow|JSONLines|NDJSON|Native|"
                        r"Values|LineAsString|Raw|CustomSeparated)")
FIRST_WORD = re.compile(r"^(?:\s+|--[^\n]*\n?|/\*.*?\*/|\()*(\w+)", re.S)
TAIL_FORMAT = re.compile(r"(?is)\bFORMAT\s+(\w+)\s*;?\s*$")
INSERT_HEAD = re.compile(r"(?is)^(\s*INSERT\b.*?)\s+(?:FORMAT\s+(\w+)|(VALUES))\s*;?\s*$")
INSERT_INLINE = re.compile(rb"(?is)^(\s*INSERT\b.*?)\s+FORMAT\s+(\w+)[ \t]*\r?\n?")
CHUNK = 1 << 20


class CHError(Exception):
    def __init__(self, message, code=None, status=500):
        m = re.search(r"Code: (\d+)\.", message)
        if m and code is None:
            message, code = message[m.start():], int(m.group(1))
        elif code is not None and not message.startswith("Code:"):
            message = f"Code: {code}. DB::Exception: {message}"
        super().__init__(message)
        self.code, self.status = code or 1002, status  # 1002 = UNKNOWN_EXCEPTION


def checksum(data):
    # CityHash128 v1.0.2 as ClickHouse writes it. clickhouse-cityhash returns the
    # 128-bit int with Google's low64 in the HIGH half, hence the swap.
    h = CityHash128(data)
    return struct.pack("<QQ", h >> 64, h & 0xFFFFFFFFFFFFFFFF)


def native_compress(data):
    out = []
    for i in range(0, len(data), CHUNK):
        comp = lz4.block.compress(data[i:i + CHUNK], store_size=False)
        hdr = struct.pack("<BII", 0x82, 9 + len(comp), len(data[i:i + CHUNK]))
        out += [checksum(hdr + comp), hdr, comp]
    return b"".join(out)


def native_decompress(read, verify=True):
    """Yields the payloads of a stream of ClickHouse compressed blocks."""
    buf = bytearray()
    while True:
        while len(buf) < 25 and (d := read()):
            buf += d
        if not buf:
            return
        if len(buf) < 25:
            raise CHError("Truncated compressed block header", 432)
        method, csize, usize = struct.unpack_from("<BII", buf, 16)
        while len(buf) < 16 + csize and (d := read()):
            buf += d
        if len(buf) < 16 + csize:
            raise CHError("Truncated compressed block", 432)
        block = bytes(buf[16:16 + csize])
        if verify and checksum(block) != bytes(buf[:16]):
            raise CHError("Checksum doesn't match: corrupted data (compressed block)", 40)
        del buf[:16 + csize]
        if method == 0x82:
            yield lz4.block.decompress(block[9:], uncompressed_size=usize)
        elif method == 0x02:
            yield block[9:]
        else:
            raise CHError(f"Unknown compression method 0x{method:02x} (only LZ4 and NONE)", 89)


class Encoder:
    """Response body encoding: identity, native ClickHouse blocks, or HTTP lz4/gzip/deflate."""

    def __init__(self, mode):
        self.mode = mode
        if mode == "lz4":
            self.c = lz4.frame.LZ4FrameCompressor(block_linked=False)
            self.started = False
        elif mode in ("gzip", "deflate"):
            self.c = zlib.compressobj(6, zlib.DEFLATED, 31 if mode == "gzip" else 15)

    def feed(self, data, flush=False):
        if self.mode == "native":
            return native_compress(data) if data else b""
        if self.mode == "lz4":
            out = b"" if self.started else self.c.begin()
            self.started = True
            out += self.c.compress(data)
            if flush:  # flush() ends the frame; the next feed starts a new one
                self.started = False
                out += self.c.flush()
            return out
        if self.mode in ("gzip", "deflate"):
            return self.c.compress(data) + (self.c.flush(zlib.Z_SYNC_FLUSH) if flush else b"")
        return data

    def finish(self):
        if self.mode == "lz4":
            return self.c.flush() if self.started else b""
        return self.c.flush() if self.mode in ("gzip", "deflate") else b""


class BodyReader:
    """Reads a request body with Content-Length or chunked transfer encoding."""

    def __init__(self, rfile, headers):
        self.rfile = rfile
        self.chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self.left = 0 if self.chunked else int(headers.get("Content-Length") or 0)
        self.done = not self.chunked and self.left == 0

    def read(self):
        if self.done:
            return b""
        if self.chunked and self.left == 0:
            size = int(self.rfile.readline(1024).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(65536) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self.done = True
                return b""
            self.left = size
        data = self.rfile.read(min(self.left, CHUNK))
        if not data:
            raise CHError("Unexpected end of request body", 33)
        self.left -= len(data)
        if self.left == 0:
            if self.chunked:
                self.rfile.readline(16)  # the CRLF closing the chunk
            else:
                self.done = True
        return data

    def read_all(self):
        return b"".join(iter(self.read, b""))


def parse_multipart(body, content_type):
    m = re.search(r'boundary="?([^";]+)"?', content_type)
    if not m:
        raise CHError("multipart/form-data without boundary", 36)
    fields = {}
    for part in body.split(b"--" + m.group(1).encode())[1:]:
        if part.startswith(b"--"):
            break
        head, _, value = part.partition(b"\r\n\r\n")
        name = re.search(rb'name="([^"]*)"', head)
        if name:
            fields[name.group(1).decode()] = value[:-2] if value.endswith(b"\r\n") else value
    return fields


def fmt_content_type(fmt):
    f = fmt.lower()
    if f.startswith(("tabseparated", "tsv")):
        return "text/tab-separated-values; charset=UTF-8"
    if f.startswith("csv"):
        return "text/csv; charset=UTF-8; header=present" if "names" in f else "text/csv; charset=UTF-8"
    if f.startswith(("json", "ndjson")):
        return "application/json; charset=UTF-8"
    if f.startswith(("rowbinary", "native", "parquet", "arrow", "orc", "avro", "protobuf", "msgpack")):
        return "application/octet-stream"
    return "text/plain; charset=UTF-8"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "chfront"
    timeout = 120  # idle keep-alive connections are dropped after this

    def log_message(self, fmt, *args):
        log.debug("%s " + fmt, self.address_string(), *args)

    def do_GET(self):
        path = urlsplit(self.path).path
        if path in ("/ping", "/replicas_status") or (path == "/" and "query=" not in self.path):
            return self.reply(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
        if path == "/":
            return self.handle_query()
        self.reply(404, b"There is no handle " + path.encode() + b"\n")

    def do_POST(self):
        if urlsplit(self.path).path not in ("/", "/query"):
            return self.reply(404, b"There is no handle\n", drain=True)
        self.handle_query()

    def reply(self, status, body, headers=None, drain=False):
        if drain:
            try:
                BodyReader(self.rfile, self.headers).read_all()
            except Exception:
                self.close_connection = True
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def send_error_reply(self, e, body_unread):
        if body_unread:
            self.close_connection = True  # the unread rest of the body would poison keep-alive
        log.info("error %s: %s", e.code, str(e)[:500])
        self.reply(e.status, (str(e) + "\n").encode(), {
            "Content-Type": "text/plain; charset=UTF-8",
            "X-ClickHouse-Exception-Code": str(e.code), "X-ClickHouse-Query-Id": self.query_id})

    def chunk(self, data):
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def authenticate(self, params):
        h = self.headers
        user, password = h.get("X-ClickHouse-User"), h.get("X-ClickHouse-Key")
        auth = h.get("Authorization", "")
        if auth.lower().startswith("basic "):
            user, _, password = base64.b64decode(auth[6:]).decode().partition(":")
        user = user or params.get("user") or "default"
        password = password if password is not None else params.get("password", "")
        cfg = self.server.cfg
        if cfg.password and not (hmac.compare_digest(user.encode(), cfg.user.encode()) and
                                 hmac.compare_digest(password.encode(), cfg.password.encode())):
            raise CHError(f"{user}: Authentication failed: password is incorrect, or there is "
                          "no user with such name.", 516, status=401)

    def handle_query(self):
        self.query_id, self.log_sql = str(uuid.uuid4()), ""
        self.server.active.add(threading.current_thread())
        body = BodyReader(self.rfile, self.headers)
        t0 = time.monotonic()
        try:
            url = urlsplit(self.path)
            pairs = parse_qsl(url.query, keep_blank_values=True)
            params = dict(pairs)
            self.query_id = params.get("query_id") or self.query_id
            self.authenticate(params)
            self.run(params, body)
        except CHError as e:
            self.send_error_reply(e, not body.done)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # chDB errors (e.g. from SET/USE) carry "Code: N."; others are bugs
            if "Code: " not in str(e):
                log.exception("internal error")
            self.send_error_reply(CHError(str(e)), not body.done)
        finally:
            self.server.active.discard(threading.current_thread())
            log.info("%s %.3fs %s", self.command, time.monotonic() - t0, self.log_sql[:300])

    def run(self, params, body):
        qparams = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
        settings = {k: v for k, v in params.items() if k not in RESERVED and not k.startswith("param_")}
        sql = params.get("query", "")
        ctype = self.headers.get("Content-Type", "")
        read = body.read
        if params.get("decompress") in ("1", "true"):
            verify = params.get("http_native_compression_disable_checksumming_on_decompress") not in ("1", "true")
            read = native_decompress(body.read, verify).__next__
            read = _eof_to_empty(read)
        data = None  # bytes to stream into an INSERT
        if ctype.startswith("multipart/form-data"):
            for k, v in parse_multipart(b"".join(iter(read, b"")), ctype).items():
                v = v.decode()
                if k == "query":
                    sql = sql + "\n" + v if sql else v
                elif k.startswith("param_"):
                    qparams[k[6:]] = v
                else:
                    settings[k] = v
        elif sql:
            m = INSERT_HEAD.match(sql)
            if m:
                sql, data = m.group(1), (m.group(2) or "Values", read)
            else:
                rest = b"".join(iter(read, b""))
                if rest.strip():
                    sql += "\n" + rest.decode()
        else:
            raw = b"".join(iter(read, b""))
            try:
                sql = raw.decode()
            except UnicodeDecodeError:  # binary inline INSERT data: split it off the query
                m = INSERT_INLINE.match(raw[:65536])
                if not m:
                    raise CHError("Query is not valid UTF-8", 36)
                sql, rest = m.group(1).decode(), raw[m.end():]
                data = (m.group(2).decode(), iter([rest, b""]).__next__)
        if not sql.strip():
            raise CHError("Empty query", 62)
        self.log_sql = " ".join(sql.split())
        fmt = (TAIL_FORMAT.search(sql) or [None, None])[1] or params.get("default_format") or "TabSeparated"
        accept = self.headers.get("Accept-Encoding", "").lower()
        mode = None
        if params.get("compress") in ("1", "true"):
            mode = "native"
        elif params.get("enable_http_compression", "1") not in ("0", "false"):
            mode = next((m for m in ("lz4", "gzip", "deflate") if m in accept), None)
        with self.server.connection(params) as conn:
            if settings:
                for k in settings:
                    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", k):
                        raise CHError(f"Unknown setting '{k}'", 115)
                conn.query("SET " + ", ".join(f"{k} = {quote(v)}" for k, v in settings.items()))
            if params.get("database"):
                conn.query("USE " + quote_ident(params["database"]))
            if data is not None:
                return self.run_insert(conn, sql, data[0], data[1])
            word = (FIRST_WORD.match(sql) or [None, ""])[1].upper()
            stream = (word in ("SELECT", "WITH") and STREAMABLE.match(fmt) and
                      params.get("wait_end_of_query") not in ("1", "true"))
            if stream and self.run_stream(conn, sql, fmt, qparams, mode):
                return
            try:
                res = conn.query(sql, fmt, params=qparams)
            except Exception as e:
                raise CHError(str(e))
            out = Encoder(mode)
            payload = out.feed(res.bytes()) + out.finish()
            self.reply(200, payload, self.ok_headers(fmt, mode, summary(res)))

    def ok_headers(self, fmt, mode, summ=None):
        h = {"Content-Type": fmt_content_type(fmt), "X-ClickHouse-Format": fmt,
             "X-ClickHouse-Query-Id": self.query_id, "X-ClickHouse-Server-Display-Name": "chfront"}
        if mode in ("lz4", "gzip", "deflate"):
            h["Content-Encoding"] = mode
        if summ:
            h["X-ClickHouse-Summary"] = json.dumps(summ)
        return h

    def run_insert(self, conn, sql, fmt, read):
        try:
            ins = conn.send_insert(sql, fmt)
        except Exception as e:
            raise CHError(str(e))
        try:
            while d := read():
                ins.append(d)
            r = ins.finish()
        except CHError:
            ins.cancel()
            raise
        except Exception as e:
            try:
                ins.cancel()
            except Exception:
                pass
            raise CHError(str(e))
        s = {"read_rows": r.rows_written, "read_bytes": r.bytes_written, "written_rows": r.rows_written,
             "written_bytes": r.bytes_written, "total_rows_to_read": 0, "result_rows": r.rows_written,
             "result_bytes": r.bytes_written, "elapsed_ns": int(r.elapsed * 1e9)}
        self.reply(200, b"", self.ok_headers(fmt, None, {k: str(v) for k, v in s.items()}))

    def run_stream(self, conn, sql, fmt, qparams, mode):
        """Streams a SELECT chunk by chunk; returns False if the caller should run it plainly."""
        try:
            st = conn.send_query(sql, fmt, params=qparams)
        except Exception as e:
            if "Streaming query is not supported" in str(e):
                return False
            raise CHError(str(e))
        try:
            first = st.fetch()
        except Exception as e:
            raise CHError(str(e))
        if first is None:  # empty result: chDB streams no header, so let query() render it
            st.close()
            return False
        tag = "".join(secrets.choice(string.ascii_lowercase) for _ in range(16))
        self.send_response(200)
        for k, v in self.ok_headers(fmt, mode).items():
            self.send_header(k, v)
        self.send_header("X-ClickHouse-Exception-Tag", tag)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        enc = Encoder(mode)
        data = first.bytes()
        # chDB formats every streamed chunk on its own: strip the repeated header of
        # *WithNames[AndTypes] formats and restore the "," between Values chunks.
        header = data[:header_len(fmt, data)]
        sep = b"," if fmt.lower() == "values" else b""
        try:
            while True:
                self.chunk(enc.feed(data))
                chunk = st.fetch()
                if chunk is None:
                    break
                data = chunk.bytes()
                if header and data.startswith(header):
                    data = data[len(header):]
                data = sep + data
        except (BrokenPipeError, ConnectionResetError):
            st.close()
            raise
        except Exception as e:  # mid-stream error: ClickHouse 25.11+ exception block
            msg = str(CHError(str(e))).encode() + b"\n"
            log.info("error mid-stream: %s", msg[:500])
            self.chunk(enc.feed(b"", flush=True))
            self.chunk(enc.feed(b"\r\n__exception__\r\n%s\r\n%s%d %s\r\n__exception__\r\n" % (
                tag.encode(), msg, len(msg), tag.encode()), flush=True))
            self.close_connection = True
        self.chunk(enc.finish())
        self.wfile.write(b"0\r\n\r\n")
        return True


def header_len(fmt, data):
    """Length of the header a *WithNames / *WithNamesAndTypes output starts with."""
    f = fmt.lower()
    n = 2 if f.endswith("withnamesandtypes") else 1 if f.endswith("withnames") else 0
    pos = 0
    if n and f.startswith("rowbinary"):
        def varint():
            nonlocal pos
            v = shift = 0
            while True:
                b = data[pos]
                pos += 1
                v |= (b & 0x7F) << shift
                shift += 7
                if b < 0x80:
                    return v
        for _ in range(varint() * n):
            length = varint()  # (not `pos += varint()`: that reads pos before the call)
            pos += length
        return pos
    for _ in range(n):
        pos = data.index(b"\n", pos) + 1
    return pos


def _eof_to_empty(next_fn):
    def read():
        try:
            return next_fn()
        except StopIteration:
            return b""
    return read


def quote(v):
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_ident(v):
    return "`" + v.replace("\\", "\\\\").replace("`", "\\`") + "`"


def summary(res):
    try:
        s = {"read_rows": res.rows_read(), "read_bytes": res.bytes_read(), "written_rows": res.rows_written(),
             "written_bytes": res.bytes_written(), "total_rows_to_read": res.rows_read(),
             "result_rows": res.rows_read(), "result_bytes": len(res), "elapsed_ns": int(res.elapsed() * 1e9)}
        return {k: str(v) for k, v in s.items()}
    except Exception:
        return None


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr, cfg):
        super().__init__(addr, Handler)
        self.cfg = cfg
        self.tls = None
        if cfg.tls_cert:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(cfg.tls_cert, cfg.tls_key)
            # The handshake runs in the request's thread (finish_request), so
            # a client that stalls or rejects the certificate blocks nobody.
            self.socket = self.tls.wrap_socket(self.socket, server_side=True,
                                               do_handshake_on_connect=False)
        self.path = os.path.abspath(cfg.data)
        os.makedirs(self.path, exist_ok=True)
        self.anchor = chdb.state.connect(self.path)  # keeps the engine up for the server's life
        self.anchor.query("SELECT 1")
        self.active = set()
        self.sessions = {}  # session_id -> [conn, lock, last_used, timeout]
        self.sessions_lock = threading.Lock()

    def finish_request(self, request, client_address):
        if self.tls is not None:
            try:
                request.settimeout(10)
                request.do_handshake()
                request.settimeout(None)
            except (ssl.SSLError, OSError) as e:
                log.info("TLS handshake with %s failed: %s", client_address[0], e)
                return
        super().finish_request(request, client_address)

    def connection(self, params):
        sid = params.get("session_id")
        if not sid:
            return _Fresh(self.path)
        timeout = float(params.get("session_timeout") or 60)
        now = time.monotonic()
        with self.sessions_lock:
            for k, s in list(self.sessions.items()):
                if now - s[2] > s[3] and not s[1].locked():
                    s[0].close()
                    del self.sessions[k]
            s = self.sessions.get(sid)
            if s is None:
                if params.get("session_check") in ("1", "true"):
                    raise CHError(f"Session {sid} not found", 372)
                s = self.sessions[sid] = [chdb.state.connect(self.path), threading.Lock(), now, timeout]
            s[2], s[3] = now, timeout
        if not s[1].acquire(blocking=False):
            raise CHError(f"Session {sid} is locked by a concurrent client", 373)
        return _Session(s)

    def close_all(self):
        for s in self.sessions.values():
            s[0].close()
        self.anchor.close()


class _Fresh:
    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self.conn = chdb.state.connect(self.path)
        return self.conn

    def __exit__(self, *exc):
        self.conn.close()


class _Session:
    def __init__(self, s):
        self.s = s

    def __enter__(self):
        return self.s[0]

    def __exit__(self, *exc):
        self.s[2] = time.monotonic()
        self.s[1].release()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=18123)
    ap.add_argument("--data", required=True, help="persistent chDB data directory")
    ap.add_argument("--user", default="default")
    ap.add_argument("--password", default="", help="empty: no authentication check")
    ap.add_argument("--pid-file", help="written once listening, removed on clean exit")
    ap.add_argument("--log-level", default="INFO")
    ap.add_argument("--tls-cert", help="PEM certificate chain: serve HTTPS instead of HTTP")
    ap.add_argument("--tls-key", help="PEM private key of --tls-cert")
    cfg = ap.parse_args()
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        ap.error("--tls-cert and --tls-key go together")
    logging.basicConfig(level=cfg.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    srv = Server((cfg.host, cfg.port), cfg)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    t = threading.Thread(target=srv.serve_forever, name="acceptor", daemon=True)
    t.start()
    if cfg.pid_file:
        with open(cfg.pid_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    log.info("chfront listening on %s://%s:%d (data %s, chDB %s)", "https" if srv.tls else "http",
             cfg.host, srv.server_address[1], srv.path, chdb.__version__)
    while not stop.wait(0.2):
        pass
    log.info("shutting down")
    srv.shutdown()
    srv.server_close()
    deadline = time.monotonic() + 15
    while srv.active and time.monotonic() < deadline:  # let in-flight queries finish
        time.sleep(0.05)
    srv.close_all()
    if cfg.pid_file and os.path.exists(cfg.pid_file):
        os.remove(cfg.pid_file)
    log.info("stopped")


if __name__ == "__main__":
    main()
