"""The link between the dispatcher and a front-end process: compact binary messages on a Unix socket.

A front-end process terminates client connections and sends each query's bytes to its instance
itself; the dispatcher sees only descriptors. Every message is one type byte and a fixed struct,
some followed by a length-prefixed payload. Writes are gathered per event-loop iteration and flushed
in one `write` (`Channel.send`), so a dispatch round's grants to one process, or one iteration's
submissions from it, cost one system call.

front end → dispatcher
  S  submit    qid, model index, batch, arrival (loop clock), timeout (NaN: the client set none), size
  C  cancel    qid (the client went away before its grant)
  D  done      qid, outcome, gRPC status, retryable, end time; message (an error's text)
  U  up        front-end index (its servers listen)
  M  counters  JSON: the front end's own counters (refused tokens, HTTP connections), when they change
dispatcher → front end
  G  grant     qid, instance slot, timeout of the send
  E  error     qid, kind, gRPC status, Retry-After; message
  I  instances JSON: [[slot, id, gRPC address, HTTP address or null], ...] (every instance in dispatch)
  T  state     JSON: {"accepting": bool, "ready": [model, ...]}
"""

from __future__ import annotations

import asyncio
import math
import struct
from collections.abc import Callable
from typing import Any

from kairosd.busy import BusyMeter

SUBMIT, CANCEL, DONE, UP, COUNTERS = b"S", b"C", b"D", b"U", b"M"
GRANT, ERROR, INSTANCES, STATE = b"G", b"E", b"I", b"T"

# DONE outcomes (OK_HTTP: answered, forwarded to the instance's HTTP endpoint as received)
OK, FAILED, CANCELLED, OK_HTTP = 0, 1, 2, 3
# ERROR kinds: how the front end raises it (kairosd.errors)
E_UNAVAILABLE, E_OVERLOADED, E_NOT_FOUND, E_BACKEND, E_OTHER = 0, 1, 2, 3, 4

_FIXED: dict[bytes, struct.Struct] = {
    SUBMIT: struct.Struct("<IHIddI"),
    CANCEL: struct.Struct("<I"),
    DONE: struct.Struct("<IBBBdI"),  # ... message length, then the message
    UP: struct.Struct("<H"),
    GRANT: struct.Struct("<IId"),
    ERROR: struct.Struct("<IBBfI"),  # ... message length, then the message
    INSTANCES: struct.Struct("<I"),  # payload length, then JSON
    STATE: struct.Struct("<I"),
    COUNTERS: struct.Struct("<I"),
}
# the types whose last field is the length of a payload that follows
_PAYLOAD = frozenset({DONE, ERROR, INSTANCES, STATE, COUNTERS})


def submit(qid: int, model: int, batch: int, arrival_s: float, timeout_s: float | None, size: int) -> bytes:
    return SUBMIT + _FIXED[SUBMIT].pack(qid, model, batch, arrival_s, math.nan if timeout_s is None else timeout_s, size)


def cancel(qid: int) -> bytes:
    return CANCEL + _FIXED[CANCEL].pack(qid)


def done(qid: int, outcome: int, status: int = 0, retryable: bool = False, end_s: float = 0.0,
         message: str = "") -> bytes:
    m = message.encode()
    return DONE + _FIXED[DONE].pack(qid, outcome, status, retryable, end_s, len(m)) + m


def up(index: int) -> bytes:
    return UP + _FIXED[UP].pack(index)


def grant(qid: int, slot: int, timeout_s: float) -> bytes:
    return GRANT + _FIXED[GRANT].pack(qid, slot, timeout_s)


def error(qid: int, kind: int, status: int, message: str, retry_after_s: float = 0.0) -> bytes:
    m = message.encode()
    return ERROR + _FIXED[ERROR].pack(qid, kind, status, retry_after_s, len(m)) + m


def blob(kind: bytes, payload: bytes) -> bytes:
    """INSTANCES, STATE or COUNTERS with its JSON payload."""
    return kind + _FIXED[kind].pack(len(payload)) + payload


class Decoder:
    """Splits a byte stream into messages: `feed(data)` returns [(type, fields..., payload?), ...]."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[Any, ...]]:
        buf = self._buf
        buf += data
        out: list[tuple[Any, ...]] = []
        pos, end = 0, len(buf)
        while pos < end:
            kind = bytes(buf[pos:pos + 1])
            st = _FIXED.get(kind)
            if st is None:
                raise ValueError(f"kairosd IPC: unknown message type {kind!r}")
            head_end = pos + 1 + st.size
            if head_end > end:
                break
            fields = st.unpack_from(buf, pos + 1)
            if kind in _PAYLOAD:
                msg_end = head_end + fields[-1]
                if msg_end > end:
                    break
                out.append((kind, *fields[:-1], bytes(buf[head_end:msg_end])))
                pos = msg_end
            else:
                out.append((kind, *fields))
                pos = head_end
        del buf[:pos]
        return out


class Channel(asyncio.Protocol):
    """One end of the link: `send` gathers messages and writes them once per loop iteration; every
    received message goes to `on_message(fields)`; `on_lost()` when the other end goes away."""

    def __init__(self, on_message: Callable[[tuple[Any, ...]], None], on_lost: Callable[[], None],
                 meter: BusyMeter | None = None) -> None:
        """`meter`: counts the time spent reading and writing messages (and in `on_message`)."""
        self._on_message = on_message
        self._meter = meter
        self._flush_step = meter.timed(self._flush) if meter is not None else self._flush
        self._on_lost = on_lost
        self._decoder = Decoder()
        self._out: list[bytes] = []
        self._transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport

    def data_received(self, data: bytes) -> None:
        meter = self._meter
        t0 = meter.start() if meter is not None else 0.0
        for msg in self._decoder.feed(data):
            self._on_message(msg)
        if meter is not None:
            meter.stop(t0)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._on_lost()

    def send(self, message: bytes) -> None:
        if self.closed:
            return
        if not self._out:
            self._loop.call_soon(self._flush_step)
        self._out.append(message)

    def _flush(self) -> None:
        out, self._out = self._out, []
        if self._transport is not None and not self.closed:
            self._transport.write(b"".join(out))

    def close(self) -> None:
        if self._transport is not None:
            self._flush()
            self._transport.close()
