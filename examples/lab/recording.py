"""What each application saw: every socket call, its result or its exception.

Entries are recorded as the calls happen, so a page can show the errno an
application really got, and a claim can check it.
"""

from __future__ import annotations

import errno
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

# calls worth showing a reader; getters and fileno() are left out
RECORDED = {
    "bind", "listen", "connect", "connect_ex", "accept", "send", "sendall", "recv",
    "shutdown", "close", "setsockopt", "settimeout",
}


def describe_error(exc: BaseException) -> dict[str, Any]:
    """An exception as a reader would see it, with the errno's symbolic name."""
    code = getattr(exc, "errno", None)
    return {
        "raised": type(exc).__name__,
        "errno": errno.errorcode.get(code) if isinstance(code, int) else None,
        "message": str(exc),
    }


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Transcript:
    """The ordered record of every host's application calls."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.entries: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def _add(self, entry: dict[str, Any]) -> None:
        entry["t_ms"] = round((time.monotonic() - self.start) * 1000, 1)
        with self._lock:
            self.entries.append(entry)

    def call(self, host: str, call: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            self._add({"host": host, "call": call, **describe_error(exc)})
            raise
        self._add({"host": host, "call": call, "returned": _show(result)})
        return result

    def add(self, host: str, entry: dict[str, Any]) -> None:
        self._add({"host": host, **entry})

    def note(self, host: str, what: str, value: Any) -> None:
        self._add({"host": host, "call": what, "returned": _show(value, limit=1000)})


def _signature(name: str, args: tuple[Any, ...]) -> str:
    shown = []
    for arg in args:
        if isinstance(arg, (bytes, bytearray)) and len(arg) > 16:
            shown.append(f"<{len(arg)} bytes>")
        else:
            shown.append(repr(arg))
    return f"{name}({', '.join(shown)})"


class RecordedSocket:
    """A socket.socket whose calls are recorded in the host's transcript."""

    def __init__(self, sock: socket.socket, host: str, transcript: Transcript,
                 registry: list[socket.socket]) -> None:
        self._sock, self._host, self._transcript, self._registry = sock, host, transcript, registry

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._sock, name)
        if name not in RECORDED:
            return attr

        def recorded(*args: Any) -> Any:
            return self._transcript.call(self._host, _signature(name, args), attr, *args)

        return recorded

    def accept(self) -> tuple[RecordedSocket, Any]:
        conn, addr = self._transcript.call(self._host, "accept()", self._sock.accept)
        self._registry.append(conn)
        return RecordedSocket(conn, self._host, self._transcript, self._registry), addr

    def __enter__(self) -> RecordedSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{self._host} {self._sock!r}>"
