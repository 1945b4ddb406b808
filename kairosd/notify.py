"""sd_notify: service state to systemd (READY, RELOADING, STOPPING, STATUS, WATCHDOG) over $NOTIFY_SOCKET.

The protocol is one datagram per notification: newline-separated `KEY=VALUE` lines sent to the
AF_UNIX SOCK_DGRAM socket named by `$NOTIFY_SOCKET` (a leading "@" names an abstract socket: "\\0"
then the rest). Without `$NOTIFY_SOCKET` every call is a no-op, so the daemon runs the same outside
systemd. The watchdog is kept alive from the event loop: one `WATCHDOG=1` every half of
`$WATCHDOG_USEC`, sent only when `$WATCHDOG_PID` is unset or names this process; a stuck loop stops
the pings and systemd restarts the service. Sends never block: a full socket queue drops the
notification (logged at debug).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping

log = logging.getLogger(__name__)

ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in µs, as systemd wants it in MONOTONIC_USEC= (with RELOADING=1)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def socket_address(value: str) -> str | bytes:
    """The sendto() address of a $NOTIFY_SOCKET value: a path, or "@name" → the abstract b"\\0name"."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval_s(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of $WATCHDOG_USEC), or None when the watchdog is off or
    meant for another process ($WATCHDOG_PID set to another pid)."""
    usec = env.get("WATCHDOG_USEC", "")
    owner = env.get("WATCHDOG_PID", "")
    if not usec:
        return None
    try:
        period_us = int(usec)
        if owner and int(owner) != pid:
            return None
    except ValueError:
        log.warning("ignoring malformed WATCHDOG_USEC=%r WATCHDOG_PID=%r", usec, owner)
        return None
    return period_us / 2e6 if period_us > 0 else None


class Notifier:
    """Sends sd_notify datagrams; every method is a no-op when there is no $NOTIFY_SOCKET."""

    def __init__(self, address: str | None, watchdog_s: float | None = None) -> None:
        self.address = address or None
        self.watchdog_s = watchdog_s if self.address else None
        self._sock: socket.socket | None = None

    @classmethod
    def from_environ(cls, env: MutableMapping[str, str] | None = None, *, unset: bool = True) -> Notifier:
        """A notifier for this process from `env` (default os.environ). With `unset`, the variables are
        removed, so child processes (local instances) neither inherit nor misuse them."""
        env = os.environ if env is None else env
        notifier = cls(env.get("NOTIFY_SOCKET"), watchdog_interval_s(env, os.getpid()))
        if unset:
            for k in ENV_KEYS:
                env.pop(k, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one datagram of `KEY=VALUE` lines; True if it was sent."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), socket.MSG_DONTWAIT, socket_address(self.address))
            return True
        except OSError as exc:  # systemd gone, queue full: the service goes on
            log.debug("sd_notify %s to %s failed: %s", lines, self.address, exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}", "STATUS=reloading the config")

    def stopping(self, status: str = "stopping") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    async def watchdog_loop(self) -> None:
        """Ping the watchdog every `watchdog_s` from the event loop until cancelled (returns at once when off)."""
        if self.watchdog_s is None:
            return
        while True:
            self.watchdog()
            await asyncio.sleep(self.watchdog_s)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
