"""A tiny hand-rolled Kafka wire codec for the tests that need bytes no client would send.

Only non-flexible request versions are used (request header v1: api_key, api_version,
correlation_id, client_id; response header v0: correlation_id), so no tagged fields appear.
"""

from __future__ import annotations

import gzip
import socket
import struct
import time
from dataclasses import dataclass, field

import crc32c

API_PRODUCE = 0
API_FETCH = 1
API_METADATA = 3
API_VERSIONS = 18


# ---------------------------------------------------------------------------------------------
# Primitive encoders
# ---------------------------------------------------------------------------------------------

def i8(v: int) -> bytes:
    return struct.pack(">b", v)


def i16(v: int) -> bytes:
    return struct.pack(">h", v)


def i32(v: int) -> bytes:
    return struct.pack(">i", v)


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


def i64(v: int) -> bytes:
    return struct.pack(">q", v)


def string(s: str | None) -> bytes:
    if s is None:
        return i16(-1)
    b = s.encode()
    return i16(len(b)) + b


def nbytes(b: bytes | None) -> bytes:
    if b is None:
        return i32(-1)
    return i32(len(b)) + b


def varint(v: int) -> bytes:
    """Zig-zag varint/varlong, as in Kafka record encoding."""
    z = (v << 1) ^ (v >> 63)
    z &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = z & 0x7F
        z >>= 7
        if z:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# ---------------------------------------------------------------------------------------------
# Record batches (magic v2)
# ---------------------------------------------------------------------------------------------

@dataclass
class Rec:
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]] = field(default_factory=list)
    timestamp_delta: int = 0


def encode_record(offset_delta: int, r: Rec) -> bytes:
    body = bytearray()
    body += i8(0)  # attributes
    body += varint(r.timestamp_delta)
    body += varint(offset_delta)
    for part in (r.key, r.value):
        if part is None:
            body += varint(-1)
        else:
            body += varint(len(part)) + part
    body += varint(len(r.headers))
    for hk, hv in r.headers:
        kb = hk.encode()
        body += varint(len(kb)) + kb
        if hv is None:
            body += varint(-1)
        else:
            body += varint(len(hv)) + hv
    return varint(len(body)) + bytes(body)


def record_batch(
    records: list[Rec],
    base_timestamp: int | None = None,
    compression: int = 0,
    payload: bytes | None = None,
    corrupt_crc: bool = False,
) -> bytes:
    """A v2 record batch. `compression` sets the codec bits (1 gzip); `payload` replaces the
    encoded (and possibly compressed) records section verbatim."""
    if base_timestamp is None:
        base_timestamp = int(time.time() * 1000)
    raw = b"".join(encode_record(i, r) for i, r in enumerate(records))
    if payload is None:
        if compression == 0:
            payload = raw
        elif compression == 1:
            payload = gzip.compress(raw)
        else:
            raise ValueError("only none and gzip are built here")
    max_ts = base_timestamp + max((r.timestamp_delta for r in records), default=0)
    after_crc = (
        i16(compression)  # attributes
        + i32(len(records) - 1)  # lastOffsetDelta
        + i64(base_timestamp)
        + i64(max_ts)
        + i64(-1)  # producerId
        + i16(-1)  # producerEpoch
        + i32(-1)  # baseSequence
        + i32(len(records))
        + payload
    )
    crc = crc32c.crc32c(after_crc)
    if corrupt_crc:
        crc ^= 0xDEADBEEF
    after_length = i32(-1) + i8(2) + u32(crc) + after_crc  # leaderEpoch, magic, crc
    return i64(0) + i32(len(after_length)) + after_length


# ---------------------------------------------------------------------------------------------
# Requests and responses
# ---------------------------------------------------------------------------------------------

def request(api_key: int, version: int, correlation_id: int, body: bytes,
            client_id: str | None = "e2e-raw") -> bytes:
    """A whole request frame with a v1 request header."""
    payload = i16(api_key) + i16(version) + i32(correlation_id) + string(client_id) + body
    return i32(len(payload)) + payload


def api_versions_request(correlation_id: int, version: int = 0) -> bytes:
    # v0-v2 bodies are empty.
    return request(API_VERSIONS, version, correlation_id, b"")


def api_versions_roundtrip(s: socket.socket, correlation_id: int) -> list[tuple[int, int, int]]:
    """Sends ApiVersions v0 on `s` and checks the answer (its correlation id, no error); returns
    the (api key, min, max) list."""
    s.sendall(api_versions_request(correlation_id, 0))
    frame = recv_frame(s)
    assert frame is not None, "connection closed on ApiVersions"
    corr, err, keys, _ = parse_api_versions_v0(frame)
    assert (corr, err) == (correlation_id, 0)
    return keys


def produce_request_v3(correlation_id: int, topic: str, partition: int, records: bytes,
                       acks: int = 1, timeout_ms: int = 10000) -> bytes:
    body = (
        string(None)  # transactional_id
        + i16(acks)
        + i32(timeout_ms)
        + i32(1)
        + string(topic)
        + i32(1)
        + i32(partition)
        + nbytes(records)
    )
    return request(API_PRODUCE, 3, correlation_id, body)


class Reader:
    def __init__(self, b: bytes):
        self.b = b
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.b):
            raise ValueError(f"short response: want {n} bytes at {self.pos} of {len(self.b)}")
        out = self.b[self.pos:self.pos + n]
        self.pos += n
        return out

    def i16(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def i32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def i64(self) -> int:
        return struct.unpack(">q", self.take(8))[0]

    def string(self) -> str | None:
        n = self.i16()
        return None if n < 0 else self.take(n).decode()

    def remaining(self) -> int:
        return len(self.b) - self.pos


@dataclass
class ProducePartitionResult:
    topic: str
    partition: int
    error_code: int
    base_offset: int
    log_append_time: int


def parse_produce_response_v3(body: bytes) -> tuple[int, list[ProducePartitionResult]]:
    """`body` is the frame after the length prefix. Returns (correlation_id, partitions)."""
    r = Reader(body)
    correlation_id = r.i32()
    out = []
    for _ in range(r.i32()):
        topic = r.string()
        for _ in range(r.i32()):
            partition = r.i32()
            error_code = r.i16()
            base_offset = r.i64()
            log_append_time = r.i64()
            out.append(ProducePartitionResult(topic, partition, error_code, base_offset,
                                              log_append_time))
    r.i32()  # throttle_time_ms
    return correlation_id, out


def parse_api_versions_v0(body: bytes) -> tuple[int, int, list[tuple[int, int, int]], int]:
    """Returns (correlation_id, error_code, [(api_key, min, max)], trailing byte count)."""
    r = Reader(body)
    correlation_id = r.i32()
    error_code = r.i16()
    keys = []
    for _ in range(r.i32()):
        keys.append((r.i16(), r.i16(), r.i16()))
    return correlation_id, error_code, keys, r.remaining()


# ---------------------------------------------------------------------------------------------
# Sockets
# ---------------------------------------------------------------------------------------------

def connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(s: socket.socket, n: int) -> bytes | None:
    """`n` bytes, or None if the peer closed first (a partial read also counts as closed)."""
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = s.recv(n - len(buf))
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_frame(s: socket.socket) -> bytes | None:
    """The next response frame (without its length prefix), or None if the peer closed."""
    head = recv_exact(s, 4)
    if head is None:
        return None
    (n,) = struct.unpack(">i", head)
    return recv_exact(s, n)


def is_closed_by_peer(s: socket.socket, timeout: float = 5.0) -> bool:
    """True if the peer closes (EOF or reset) within `timeout` without sending anything more."""
    s.settimeout(timeout)
    try:
        data = s.recv(65536)
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return data == b""


def fetch_request_v4(correlation_id: int, topic: str, partition: int, offset: int,
                     max_bytes: int = 64 << 20, max_wait_ms: int = 0, min_bytes: int = 0) -> bytes:
    body = (
        i32(-1)  # replica_id
        + i32(max_wait_ms)
        + i32(min_bytes)
        + i32(max_bytes)
        + i8(0)  # isolation_level
        + i32(1) + string(topic)
        + i32(1) + i32(partition) + i64(offset) + i32(max_bytes)
    )
    return request(API_FETCH, 4, correlation_id, body)


@dataclass
class FetchPartition:
    error_code: int
    high_watermark: int
    records: bytes


def parse_fetch_response_v4(body: bytes) -> tuple[int, FetchPartition]:
    """(correlation_id, the single partition's data)."""
    r = Reader(body)
    correlation_id = r.i32()
    r.i32()  # throttle_time_ms
    parts = []
    for _ in range(r.i32()):
        r.string()
        for _ in range(r.i32()):
            r.i32()  # partition_index
            error_code = r.i16()
            hw = r.i64()
            r.i64()  # last_stable_offset
            n = r.i32()
            for _ in range(max(n, 0)):
                r.i64()
                r.i64()
            size = r.i32()
            recs = b"" if size < 0 else r.take(size)
            parts.append(FetchPartition(error_code, hw, recs))
    assert len(parts) == 1, parts
    return correlation_id, parts[0]


@dataclass
class BatchInfo:
    base_offset: int
    record_count: int
    codec: int
    timestamp_type: int


def batch_headers(records: bytes) -> list[BatchInfo]:
    """Headers of the whole v2 batches in a fetched record set (a partial tail is ignored)."""
    out = []
    pos = 0
    while pos + 61 <= len(records):
        base_offset, length = struct.unpack_from(">qi", records, pos)
        if pos + 12 + length > len(records):
            break
        attrs = struct.unpack_from(">h", records, pos + 21)[0]
        count = struct.unpack_from(">i", records, pos + 57)[0]
        out.append(BatchInfo(base_offset, count, attrs & 7, (attrs >> 3) & 1))
        pos += 12 + length
    return out


def fetch_batches(port: int, topic: str, partition: int = 0, offset: int = 0) -> list[BatchInfo]:
    """All batch headers from `offset` to the high watermark, over a raw connection."""
    s = connect(port)
    try:
        out: list[BatchInfo] = []
        corr = 1
        while True:
            s.sendall(fetch_request_v4(corr, topic, partition, offset))
            frame = recv_frame(s)
            assert frame is not None, "broker closed the connection on a Fetch"
            _, p = parse_fetch_response_v4(frame)
            assert p.error_code == 0, f"fetch error {p.error_code}"
            batches = batch_headers(p.records)
            out.extend(batches)
            if not batches:
                return out
            offset = batches[-1].base_offset + batches[-1].record_count
            if offset >= p.high_watermark:
                return out
            corr += 1
    finally:
        s.close()
