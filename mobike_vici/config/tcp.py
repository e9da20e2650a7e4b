"""The ``tcp*`` keys of ``mobike { }``: IKE and ESP over TCP (RFC 9329) in the native daemon.

Their table rows live with the other keys in ``config.mobike``; this module owns
their typed form and validation, so the TCP transport reads one frozen object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from .errors import ConfigError


class TcpMode(Enum):
    """When the initiator carries a path over TCP."""

    NO = "no"
    FALLBACK = "fallback"
    ALWAYS = "always"


RETRY_UDP_FACTOR = 5
"""While a path runs over TCP, UDP is tried again every this many ``fallback_after``."""


@dataclass(frozen=True, slots=True)
class TcpSettings:
    """The TCP transport's policy and its denial-of-service bounds."""

    mode: TcpMode = TcpMode.NO
    ports: tuple[int, ...] = (4500,)
    fallback_after: float = 1.0
    max_streams: int = 256
    max_per_source: int = 8
    idle_timeout: float = 60.0
    slow_timeout: float = 5.0

    @property
    def retry_udp_every(self) -> float:
        return self.fallback_after * RETRY_UDP_FACTOR


NO_TCP = TcpSettings()
"""The default: no TCP at all."""

TCP_KEYS = ("tcp", "tcp_port", "tcp_fallback_after", "tcp_max_streams", "tcp_max_per_source",
            "tcp_idle_timeout", "tcp_slow_timeout")

_MODES = {"no": TcpMode.NO, "never": TcpMode.NO, "fallback": TcpMode.FALLBACK,
          "always": TcpMode.ALWAYS, "yes": TcpMode.ALWAYS}

Text = Callable[[str], "str | None"]
Uint = Callable[[str, str, int, int], int]
Time = Callable[[str, str], float]
Err = Callable[[str, str], ConfigError]


def tcp_settings(text: Text, uint: Uint, time: Time, err: Err) -> TcpSettings:
    """The typed keys; ``text(key)`` is the value or None, the others validate as elsewhere."""
    kw: dict[str, object] = {}
    if (t := text("tcp")) is not None:
        if t.lower() not in _MODES:
            raise err("tcp", f"'{t}' is not no, fallback or always")
        kw["mode"] = _MODES[t.lower()]
    if (t := text("tcp_port")) is not None:
        ports = [p.strip() for p in t.split(",") if p.strip()]
        if not ports:
            raise err("tcp_port", "no port given")
        kw["ports"] = tuple(dict.fromkeys(uint(p, "tcp_port", 1, 65535) for p in ports))
    for key, name, lo, hi in (("tcp_max_streams", "max_streams", 1, 100_000),
                              ("tcp_max_per_source", "max_per_source", 1, 100_000)):
        if (t := text(key)) is not None:
            kw[name] = uint(t, key, lo, hi)
    for key, name in (("tcp_fallback_after", "fallback_after"),
                      ("tcp_idle_timeout", "idle_timeout"), ("tcp_slow_timeout", "slow_timeout")):
        if (t := text(key)) is not None:
            kw[name] = time(t, key)
    return TcpSettings(**kw)  # type: ignore[arg-type]
