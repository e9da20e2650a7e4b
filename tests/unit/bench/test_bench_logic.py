"""The benchmarks' own bookkeeping (no lab): which uplink the SA is on, what counts as
a result, what is reported when the data did not arrive intact."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[3] / "bench"


def load(name: str) -> ModuleType:
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCH))


@dataclass
class FakeUplink:
    addr4: str
    addr6: str


@dataclass
class FakeTopo:
    uplinks: tuple[FakeUplink, FakeUplink] = (
        FakeUplink("10.1.0.2", "2001:db8:1::2"), FakeUplink("10.2.0.2", "2001:db8:2::2"))


@dataclass
class FakeHandover:
    """Where the SA is, and what the faults did: a script, not a lab."""

    local: str
    resumed: float | None = 0.02
    topo: FakeTopo = field(default_factory=FakeTopo)
    downed: list[int] = field(default_factory=list)
    upped: list[int] = field(default_factory=list)

    def mob_local(self) -> str:
        return self.local

    def link_down(self, index: int) -> float:
        self.downed.append(index)
        return 0.0

    def link_up(self, index: int) -> float:
        self.upped.append(index)
        return 0.0

    def wait_resumed(self, after: float, timeout: float) -> float | None:
        return self.resumed

    def wait_local(self, addr: str, timeout: float) -> bool:
        return self.local == addr

    def arrivals(self) -> list[tuple[int, float, float]]:
        return []


class FakeTime:
    """A clock that moves only when slept on (the module's own ``time``, nothing else's)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def handover(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    module = load("handover")
    monkeypatch.setattr(module, "time", FakeTime())
    return module


def test_active_uplink_is_found_by_its_ipv6_address(handover: ModuleType) -> None:
    h = FakeHandover(local="2001:db8:2::2")
    assert handover.active(h) == ("2001:db8:2::2", 1)
    handover.case_a(h, 1.0)
    assert h.downed == [1]  # not uplink 0, which carried nothing


def test_an_address_on_no_uplink_is_an_error_not_uplink_0(handover: ModuleType) -> None:
    with pytest.raises(RuntimeError, match="on no uplink"):
        handover.active(FakeHandover(local="192.0.2.99"))


def test_case_c_reports_lost_when_the_first_move_never_happened(handover: ModuleType) -> None:
    # The SA stays on m0 and nothing resumes: there is no return to measure, and a
    # "return after 0 ms" would be a made-up result.
    h = FakeHandover(local="10.1.0.2", resumed=None)
    assert handover.case_c(h, 0.3) == {"outage_s": None, "return_s": None, "gap_s": None}
    assert h.upped == [0]  # the downed uplink is restored all the same


def test_case_c_reports_lost_when_never_on_the_preferred_uplink(handover: ModuleType) -> None:
    h = FakeHandover(local="10.2.0.2")
    assert handover.case_c(h, 0.3) == {"outage_s": None, "return_s": None, "gap_s": None}
    assert h.downed == []


def test_setup_failures_are_not_counted_as_not_recovered() -> None:
    module = load("handover")
    runs: list[dict[str, Any]] = [
        {"setup_failed": "no ike_sa_tracked event"},
        {"outage_s": 0.2},
        {"outage_s": None},
        {"run_failed": "status timed out", "spoilt": "status timed out"},
    ]
    out = module.summarize(runs, 3.0)
    # The bench's own failure is no lost outage: counted apart, like a set-up failure.
    assert (out["n"], out["lost"], out["setup_failed"]) == (2, 1, 2)
    assert out["max"] == 3.0  # the lost run counts as the cap


@dataclass
class FakeFamilyDeath(FakeHandover):
    """v4-death: the SPIs before and after, whether the traffic still flows at 15 s."""

    spis: list[str | None] = field(default_factory=list)
    flowing_later: bool = True
    killed: list[int] = field(default_factory=list)
    waits: int = 0

    def ike_spi(self) -> str | None:
        return self.spis.pop(0)

    def kill_family(self, family: int) -> float:
        self.killed.append(family)
        return 1000.0

    def wait_resumed(self, after: float, timeout: float) -> float | None:
        self.waits += 1
        return self.resumed if self.waits == 1 else (0.01 if self.flowing_later else None)


def test_v4_death_wants_the_same_ike_sa_carrying_traffic_15s_later(
        handover: ModuleType) -> None:
    same = FakeFamilyDeath(local="10.1.0.2", spis=["a_b", "a_b"])
    out = handover.case_f(same, 3.0)
    assert same.killed == [4] and out["outage_s"] == 0.02
    assert out["same_ike_sa_up_15s"] is True
    assert handover.time.monotonic() >= 1000.0 + handover.STILL_UP_AFTER  # it waited
    rekeyed = FakeFamilyDeath(local="10.1.0.2", spis=["a_b", "c_d"])
    assert handover.case_f(rekeyed, 3.0)["same_ike_sa_up_15s"] is False
    silent = FakeFamilyDeath(local="10.1.0.2", spis=["a_b", "a_b"], flowing_later=False)
    assert handover.case_f(silent, 3.0)["same_ike_sa_up_15s"] is False


def test_ping_outage_is_the_first_reply_after_the_fault(tmp_path: Path) -> None:
    module = load("handover")
    log = tmp_path / "ping.log"
    log.write_text("PING 10.88.0.1 (10.88.0.1) 56(84) bytes of data.\n"
                   "[100.000] 64 bytes from 10.88.0.1: icmp_seq=1 ttl=64 time=0.2 ms\n"
                   "[100.002] 64 bytes from 10.88.0.1: icmp_seq=2 ttl=64 time=0.2 ms\n"
                   "[100.450] 64 bytes from 10.88.0.1: icmp_seq=40 ttl=64 time=0.3 ms\n")
    ping = module.Ping(log, offset=50.0)  # wall = monotonic + 50
    got = ping.outage(50.0)  # the fault at wall 100.0: the reply at .002 was under way
    assert got is not None and abs(got - 0.45) < 1e-6
    assert ping.outage(50.5) is None


def test_throughput_reports_no_rate_for_corrupted_transfers(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load("esp_throughput")

    class NoLab:
        def __enter__(self) -> NoLab:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

    class Tunnel:
        a = b = None  # the ends (charon's have no status to ask)

        class topo:  # mirrors the real attribute
            host_a = host_b = None

    rounds = iter([("a", "a"), ("b", "x"), ("c", "c")])  # warm-up, then a corrupt round

    def transfer(*_args: object, **_kw: object) -> tuple[dict[str, Any], dict[str, Any]]:
        sent, got = next(rounds, ("d", "d"))
        return {"sha256": sent}, {"sha256": got, "bytes": 1 << 20, "seconds": 0.1}

    monkeypatch.setattr(module, "Lab", NoLab)
    monkeypatch.setattr(module, "build", lambda *a, **k: Tunnel())
    monkeypatch.setattr(module, "transfer", transfer)
    out = module.measure("native_native", "aes128gcm16", 1 << 20, 2, False)
    assert out["intact"] is False
    assert out["mbit_s"] is None and out["median_mbit_s"] is None
    assert out["corrupt_rounds"] == [0]


def test_setup_bench_names_the_load_generator_when_it_never_waited() -> None:
    ike_setup = load("ike_setup")
    # Two workers over 10 s: 0.5 s idle in all is 2.5% of their time.
    assert ike_setup.limited_by(0.5, 2, 10.0) == "load_generator"
    assert ike_setup.limited_by(8.0, 2, 10.0) == "responder"
    assert ike_setup.limited_by(1.0, 2, 0.0) == "unknown"


def test_setup_bench_gives_the_native_responder_explicit_load_test_limits() -> None:
    ike_setup = load("ike_setup")
    section = ike_setup.native_limits_conf()
    for key, value in ike_setup.NATIVE_LOAD_LIMITS.items():
        assert f"{key} = {value}\n" in section
    from mobike_vici.config import load_string
    policy = load_string(section).mobike.policy
    assert policy.max_ike_sas_per_peer == 1000000


def test_scale_bench_rekey_times_are_whole_seconds_for_charon() -> None:
    scale = load("scale")
    conf = scale._with_rekey("children {\n    esp_proposals = aes128gcm16\n}\n", 45)
    assert "rekey_time = 45s" in conf and "life_time = 67s" in conf
    assert "rand_time = 4s" in conf
    with pytest.raises(SystemExit):
        scale.parse_args(["--sizes", "1000,100"])
    assert scale.parse_args(["--sizes", "100,1000,10000"]).sizes == [100, 1000, 10000]
