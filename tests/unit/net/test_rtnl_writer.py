"""RtnlWriter once attached to a loop: the kernel's ``send()`` (which takes its routing
lock, busy while a link comes up) never runs on the loop's thread, requests leave in
the order they were made, and a send that fails is reported on the loop."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
import threading

from pyroute2.netlink.rtnl.rtmsg import rtmsg

from mobike_vici.net.rtnl_writer import RTM_DELROUTE, RtnlWriter, throw_msg

PEERS = [ipaddress.ip_address(f"192.0.2.{i}") for i in range(1, 6)]


class _RecordingSocket:
    """Stands in for the netlink socket: remembers each send's thread and request, sends
    nothing to the kernel (so no answer ever comes: the tests drop what is pending)."""

    def __init__(self, fail: int | None = None) -> None:
        self._pair = socket.socketpair()
        self.fail = fail
        self.sends: list[tuple[int, bytes]] = []

    def fileno(self) -> int:
        return self._pair[0].fileno()

    def send(self, data: bytes) -> int:
        self.sends.append((threading.get_ident(), bytes(data)))
        if self.fail is not None:
            raise OSError(self.fail, "refused")
        return len(data)

    def recv(self, size: int) -> bytes:
        raise BlockingIOError

    def close(self) -> None:
        for end in self._pair:
            end.close()


def _writer(fake: _RecordingSocket, reports: list[tuple[str, dict[str, object]]]
            ) -> RtnlWriter:
    writer = RtnlWriter(None, lambda name, fields: reports.append((name, fields)))
    writer._sock.close()
    writer._sock = fake  # type: ignore[assignment]
    return writer


def _destination(data: bytes) -> str:
    msg = rtmsg(data)
    msg.decode()
    return str(msg.get_attr("RTA_DST"))


def test_attached_writer_sends_off_the_loop_thread_in_order() -> None:
    fake = _RecordingSocket()
    reports: list[tuple[str, dict[str, object]]] = []

    async def scenario() -> int:
        writer = _writer(fake, reports)
        writer.attach(asyncio.get_running_loop())
        for peer in PEERS:
            writer.send(throw_msg(RTM_DELROUTE, peer), "throw_del", ())
        writer.flush(0.2)  # all queued sent; no answers come from the fake
        writer._pending.clear()
        writer.close()
        return threading.get_ident()

    loop_thread = asyncio.run(scenario())
    assert len(fake.sends) == len(PEERS)
    assert all(thread != loop_thread for thread, _ in fake.sends)
    assert [_destination(data) for _, data in fake.sends] == [str(p) for p in PEERS]
    assert reports == []


def test_a_send_the_kernel_refuses_is_reported_on_the_loop() -> None:
    fake = _RecordingSocket(fail=errno.ENOBUFS)
    reports: list[tuple[str, dict[str, object]]] = []
    report_threads: list[int] = []

    async def scenario() -> tuple[int, int]:
        writer = _writer(fake, reports)
        writer._report = lambda name, fields: (reports.append((name, fields)),
                                               report_threads.append(threading.get_ident()))
        writer.attach(asyncio.get_running_loop())
        writer.send(throw_msg(RTM_DELROUTE, PEERS[0]), "throw_del", ())
        writer.flush(0.2)
        for _ in range(50):  # the failure comes back through call_soon_threadsafe
            if reports:
                break
            await asyncio.sleep(0.01)
        failed, pending = writer.failed, len(writer._pending)
        writer.close()
        return failed, pending

    failed, pending = asyncio.run(scenario())
    assert (failed, pending) == (1, 0)
    assert reports == [("route_failed", {"call": "throw_del", "error": "ENOBUFS"})]
    assert report_threads == [threading.get_ident()]


def test_unattached_writer_sends_at_once() -> None:
    fake = _RecordingSocket()
    writer = _writer(fake, [])
    writer.send(throw_msg(RTM_DELROUTE, PEERS[0]), "throw_del", ())
    assert [thread for thread, _ in fake.sends] == [threading.get_ident()]
    writer._pending.clear()
    writer.close()
