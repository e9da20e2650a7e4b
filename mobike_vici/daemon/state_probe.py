"""``mobike-vici run``: an IKE_SA the peer lost in a restart without a DELETE is ended
and set up again, in seconds rather than after charon's DPD gives up.

The decision is ``mobike.lost_state``; this is its I/O. Every ``TICK`` it reads charon's
unanswered request of each IKE_SA charon initiated from the IKE relay's ledger. The
probe is an IKE_SA_INIT with a fresh SPI from an ephemeral UDP port on the IKE_SA's
address charon's request left from to the peer's port 500 where it went; any answer to
that SPI (a response, COOKIE, INVALID_KE_PAYLOAD, NO_PROPOSAL_CHOSEN) counts. The
resend is charon's request once more (``LAST_COPIES`` copies), unchanged, from charon's
address and port (the relay's raw socket); the peer answers it from its cache if it
still has the IKE_SA, and the ledger sees the response. No check while a move of the
IKE_SA is under way. A verdict ends the IKE_SA over VICI (``ike_sa_deleted``,
reason ``peer_lost_state``) and initiates it again when a child of the connection
restarts on DPD or starts on load.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any

from ..backends.vici import IkeSaInfo, ViciClient, ViciError
from ..backends.vici.commands import charon_children
from ..config.attach import AttachConfig
from ..config.parser import Section
from ..core.state_check import LAST_COPIES
from ..eventlog import EventLog
from ..ikev2.constants import ExchangeType, HeaderFlag, ProtocolId
from ..ikev2.crypto import dh_generate
from ..ikev2.message import DecodeError, Header, decode_header, encode_message
from ..ikev2.payloads import KE, SA, Nonce, Payload
from ..ikev2.proposals import parse_proposals, to_payload
from ..mobike.lost_state import LostStateCheck, Step
from ..net.ike_wire import IkeDatagram
from ..types import Endpoint, Path
from .ike_relay import IkeRelay, Sender, send_from

TICK = 0.25
IKE_PORT = 500
PROBE_PROPOSAL = "aes128-sha256-x25519"  # any answer will do, a refusal included

Spawn = Callable[[Coroutine[Any, Any, Any]], None]


def probe_message(spi_i: bytes) -> bytes:
    """A well-formed IKE_SA_INIT request with SPI ``spi_i`` (RFC 7296 §1.2)."""
    spec = parse_proposals(PROBE_PROPOSAL, ProtocolId.IKE)[0]
    group = spec.dh[0]
    header = Header(spi_i, bytes(8), 0, ExchangeType.IKE_SA_INIT, HeaderFlag.INITIATOR, 0)
    payloads: list[Payload] = [SA((to_payload(spec, 1, b""),)),
                               KE(group, dh_generate(group, os.urandom).public),
                               Nonce(os.urandom(32))]
    return encode_message(header, payloads)


def answers(data: bytes, spi_i: bytes) -> bool:
    """True when ``data`` is a response to the probe with SPI ``spi_i``."""
    try:
        header = decode_header(data)
    except DecodeError:
        return False
    return (header.spi_i == spi_i and header.is_response
            and header.exchange == ExchangeType.IKE_SA_INIT)


def restarts(body: object, file: Section | None) -> bool:
    """Whether the connection is to be set up again after a lost IKE_SA: a child with
    ``dpd_action = restart`` in charon (``body``, its list-conns entry, which does not
    say ``start_action``) or started on load in the controller's file (its section)."""
    children = body.get("children") if isinstance(body, dict) else None
    if isinstance(children, dict) and any(
            isinstance(child, dict) and str(child.get("dpd_action", "")) == "restart"
            for child in children.values()):
        return True
    configured = file.sections.get("children") if file is not None else None
    if configured is None:
        return False
    return any("start" in child.keys["start_action"].value
               for child in configured.sections.values() if "start_action" in child.keys)


def conn_section(config: AttachConfig, conn: str) -> Section | None:
    """``connections.<conn>`` of the controller's file, if it names it."""
    conns = config.tree.sections.get("connections") if config.tree is not None else None
    return conns.sections.get(conn) if conns is not None else None


class StateProbe:
    """The controller's checks; ``start``/``stop`` from a running loop. ``sas`` gives the
    IKE_SAs charon initiated, by SPI."""

    def __init__(self, log: EventLog, client: ViciClient, relay: IkeRelay,
                 sas: Callable[[], dict[str, IkeSaInfo]], spawn: Spawn,
                 config: Callable[[], AttachConfig], send: Sender = send_from) -> None:
        self.log = log
        self.client = client
        self.relay = relay
        self.ledger = relay.ledger
        self.sas = sas
        self.spawn = spawn
        self.config = config
        self.send = send
        self.check = LostStateCheck()
        self._probes: dict[str, socket.socket] = {}  # by IKE_SA, while one waits
        self._task: asyncio.Task[None] | None = None
        self._ending: set[str] = set()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for spi in list(self._probes):
            self._close(spi)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(TICK)
            self.tick(loop.time())

    def tick(self, now: float) -> None:
        every = self.sas()
        self._ending &= set(every)  # ended: charon's table no longer lists it
        sas = {spi: info for spi, info in every.items()
               if info.initiator and info.state == "ESTABLISHED" and spi not in self._ending}
        self.check.retain(set(sas))
        for spi in [s for s in self._probes if s not in sas]:
            self._close(spi)
        for spi, info in sas.items():
            # A move under way has its own bounds (steer_plan), and a resent MOBIKE
            # update would finish it behind charon's back: no check meanwhile.
            pending = [] if self.relay.moving(spi) else self.ledger.pending(spi)
            step = self.check.observe(spi, pending[0].message_id if pending else None, now)
            if step is Step.PROBE:
                self._probe(info, pending[0])
            elif step is Step.LOST:
                self._lost(info)

    # -- the probe ----------------------------------------------------------------------

    def _probe(self, info: IkeSaInfo, request: IkeDatagram) -> None:
        self._close(info.ike_spi)
        local, remote = request.src, request.dst  # the path charon asks on
        family = socket.AF_INET if local.version == 4 else socket.AF_INET6
        spi_i = os.urandom(8)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((str(local), 0))
            sock.sendto(probe_message(spi_i), (str(remote), IKE_PORT))
        except OSError as exc:
            sock.close()
            self.log.write("warning", "state_check_failed", {
                "conn": info.conn, "ike_spi": info.ike_spi, "error": str(exc)})
            return
        self._probes[info.ike_spi] = sock
        asyncio.get_running_loop().add_reader(
            sock.fileno(), self._read, info.ike_spi, sock, spi_i)
        self.log.emit("state_check_sent", conn=info.conn, ike_spi=info.ike_spi,
                      local=str(local), remote=f"{remote}[{IKE_PORT}]")

    def _read(self, ike_spi: str, sock: socket.socket, spi_i: bytes) -> None:
        try:
            data = sock.recv(0xFFFF)
        except OSError:
            return
        if not answers(data, spi_i):
            return
        self._close(ike_spi)  # the peer's half-open SA is left to its own timeout
        now = asyncio.get_running_loop().time()
        info = self.sas().get(ike_spi)
        if info is None or self.check.answered(ike_spi, now) is not Step.RESEND:
            return
        pending = self.ledger.pending(ike_spi)
        self.log.emit("state_check_answered", conn=info.conn, ike_spi=ike_spi,
                      resent=len(pending) * LAST_COPIES)
        for _ in range(LAST_COPIES):
            for request in pending:  # unchanged: as charon's own retransmission
                path = Path(Endpoint(request.src, request.sport),
                            Endpoint(request.dst, request.dport))
                with contextlib.suppress(OSError):
                    self.send(path, request.payload)

    def _close(self, ike_spi: str) -> None:
        sock = self._probes.pop(ike_spi, None)
        if sock is None:
            return
        with contextlib.suppress(RuntimeError, ValueError):
            asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()

    # -- the verdict --------------------------------------------------------------------

    def _lost(self, info: IkeSaInfo) -> None:
        self._ending.add(info.ike_spi)
        self.log.emit("ike_sa_deleted", conn=info.conn, ike_spi=info.ike_spi,
                      reason="peer_lost_state", local=str(info.path.local),
                      remote=str(info.path.remote))
        self.spawn(self._replace(info))

    async def _replace(self, info: IkeSaInfo) -> None:
        try:
            try:
                # forced: a DELETE would wait behind charon's unanswered request
                await self.client.call("terminate", {"ike-id": str(info.unique_id),
                                                     "force": "yes", "timeout": "-1"})
            except ViciError as exc:
                self.log.emit("terminate_failed", conn=info.conn, ike_spi=info.ike_spi,
                              error=str(exc))
            if not restarts(self.client.conns.get(info.conn),
                            conn_section(self.config(), info.conn)):
                return
            children = (self.config().connections.get(info.conn)
                        or charon_children(self.client, info.conn))
            for child in children[:1]:
                try:
                    await self.client.initiate(child, info.conn, timeout_ms=0)
                except ViciError as exc:
                    self.log.emit("escalation_failed", conn=info.conn, ike_spi=info.ike_spi,
                                  stage="initiate", error=str(exc))
        finally:
            self.ledger.forget(info.ike_spi)
            self.check.forget(info.ike_spi)
