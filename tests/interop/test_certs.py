"""Certificate authentication against real charon 5.9.8, each side initiating: RSA-3072,
ECDSA P-384 and Ed25519 chains (root, intermediate, leaf), RFC 7427 and the classic methods,
RSA-PSS, ids as DN, FQDN and email subjectAltNames; a revoked leaf and an unknown CA refused
by whichever side verifies. Certificates are made at test time (tests/pki.py)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mobike_vici.lab.charon import PLUGINS, Charon, start_charon
from mobike_vici.lab.native import NativeDaemon, named, start_native
from mobike_vici.lab.netns import LabError
from tests.pki import Issued, Pki, crl, dn_str, make_pki, write_layout

from .configs import CHILD, CONN, INNER_NET, NATIVE_NET
from .support import ESTABLISH_TIMEOUT, Interop, Tunnel

pytestmark = [pytest.mark.netns, pytest.mark.charon]

# charon checks CRLs only with the revocation plugin; the lab's list lacks it.
CHARON_CERT_PLUGINS = f"load = {PLUGINS} revocation constraints"
SCHEMES = {"rsa3072": "RSA_EMSA_PKCS1_SHA2_256", "p384": "ECDSA_WITH_SHA384_DER",
           "ed25519": "ED25519"}
"""How charon names the RFC 7427 scheme it verified our AUTH with."""
CLASSIC = "signature_authentication = no"
"""charon then neither sends SIGNATURE_HASH_ALGORITHMS nor signs with RFC 7427."""


@dataclass(frozen=True)
class Ends:
    """Both parties' credentials and ids as they write them."""

    native: Issued
    charon: Issued
    native_id: str | None
    charon_id: str | None
    native_cas: tuple[Issued, ...]
    charon_cas: tuple[Issued, ...]


@pytest.fixture(scope="module")
def pkis() -> dict[str, Pki]:
    return {kind: make_pki(kind, kind.upper(), slot=50) for kind in ("rsa3072", "p384",
                                                                     "ed25519")}


def _ends(pki: Pki, ids: str) -> Ends:
    if ids == "fqdn":
        native = pki.leaf("native", dns=("native.interop",), slot=51)
        charon = pki.leaf("charon", dns=("charon.interop",), slot=52)
        nid, cid = "native.interop", "charon.interop"
    elif ids == "email":
        native = pki.leaf("native", emails=("native@interop",), slot=51)
        charon = pki.leaf("charon", emails=("charon@interop",), slot=52)
        nid, cid = "native@interop", "charon@interop"
    else:
        native, charon = pki.leaf("native", slot=51), pki.leaf("charon", slot=52)
        nid, cid = None, None  # both default to the subject DN
    cas = (pki.root, pki.intermediate)
    return Ends(native, charon, nid, cid, cas, cas)


def _conf(*, local_addr: str, remote_addr: str | None, local_ts: str, remote_ts: str,
          local_id: str | None, remote_id: str | None, start: bool, local_auth: str = "pubkey",
          remote_extra: str = "") -> str:
    lid = f"id = \"{local_id}\"" if local_id else ""
    rid = f"id = \"{remote_id}\"" if remote_id else ""
    peer = f"remote_addrs = {remote_addr}" if remote_addr else ""
    return f"""connections {{
    {CONN} {{
        version = 2
        local_addrs = {local_addr}
        {peer}
        proposals = aes128-sha256-x25519
        local {{
            auth = {local_auth}
            certs = me.pem
            {lid}
        }}
        remote {{
            auth = pubkey
            {rid}
            {remote_extra}
        }}
        children {{
            {CHILD} {{
                local_ts = {local_ts}
                remote_ts = {remote_ts}
                esp_proposals = aes128-sha256
                {"start_action = start" if start else ""}
            }}
        }}
    }}
}}
"""


@dataclass
class CertLab:
    env: Interop
    charon: Charon | None = None
    daemon: NativeDaemon | None = None

    def start(self, ends: Ends, *, native_initiates: bool, extra_charon: str = "",
              native_crls: tuple[object, ...] = (), charon_crls: tuple[object, ...] = (),
              native_auth: str = "pubkey", charon_auth: str = "pubkey") -> None:
        env = self.env
        cdir, ndir = env.workdir / "charon", env.workdir / "native"
        write_layout(cdir, own=ends.charon, cas=ends.charon_cas,
                     crls=charon_crls)  # type: ignore[arg-type]
        write_layout(ndir, own=ends.native, cas=ends.native_cas,
                     crls=native_crls)  # type: ignore[arg-type]
        (cdir / "swanctl.conf").write_text(_conf(
            local_addr=env.charon_addr, remote_addr=None if native_initiates else env.native_addr,
            local_ts=INNER_NET, remote_ts=NATIVE_NET, local_id=ends.charon_id,
            remote_id=ends.native_id, start=False, local_auth=charon_auth))
        (ndir / "swanctl.conf").write_text(_conf(
            local_addr=env.native_addr, remote_addr=env.charon_addr if native_initiates else None,
            local_ts=NATIVE_NET, remote_ts=INNER_NET, local_id=ends.native_id,
            remote_id=ends.charon_id, start=native_initiates, local_auth=native_auth))
        self.charon = start_charon(env.lab, env.topo.host_b, name="charon",
                                   extra_charon=f"{CHARON_CERT_PLUGINS}\n{extra_charon}")
        env.charons.append(self.charon)
        out = self.charon.load_all(cdir / "swanctl.conf")
        assert "loaded certificate" in out, out
        assert not charon_crls or "loaded x509crl" in out.lower() or "crl" in out, out
        self.daemon = start_native(env.lab, env.topo.host_a, ndir / "swanctl.conf",
                                   name="native")
        env.natives.append(self.daemon)

    def establish(self, ends: Ends, *, native_initiates: bool, **kw: object) -> Tunnel:
        self.start(ends, native_initiates=native_initiates, **kw)  # type: ignore[arg-type]
        assert self.charon is not None and self.daemon is not None
        if not native_initiates:
            self.charon.initiate(CHILD, ike=CONN)
        tunnel = Tunnel(self.charon, self.daemon)
        tunnel.wait_agree()
        return tunnel


@pytest.fixture
def certlab(interop: Interop) -> CertLab:
    return CertLab(interop)


ROLE = pytest.mark.parametrize("native_initiates", [True, False],
                               ids=["native-initiator", "charon-initiator"])


def _charon_sa(tunnel: Tunnel) -> dict[str, object]:
    sa = tunnel.charon_sa(tunnel.ike_spi)
    assert sa is not None
    return sa


@ROLE
@pytest.mark.parametrize(("kind", "ids"), [("rsa3072", "dn"), ("p384", "fqdn"),
                                           ("ed25519", "email")])
def test_chain_rfc7427(certlab: CertLab, pkis: dict[str, Pki], native_initiates: bool,
                       kind: str, ids: str) -> None:
    ends = _ends(pkis[kind], ids)
    tunnel = certlab.establish(ends, native_initiates=native_initiates)
    sa = _charon_sa(tunnel)
    want_native = ends.native_id or dn_str("native")
    want_charon = ends.charon_id or dn_str("charon")
    assert (sa["local-id"], sa["remote-id"]) == (want_charon, want_native)
    assert tunnel.ike_event["local_id"] == want_native
    assert tunnel.ike_event["remote_id"] == want_charon
    assert certlab.charon is not None
    log = certlab.charon.log_text()
    # charon verified our chain up to its root, and our AUTH by RFC 7427 (method 14).
    assert "reached self-signed root ca with a path length of 1" in log, log[-3000:]
    scheme = SCHEMES[kind]
    assert f"authentication of '{want_native}' with {scheme} successful" in log, log[-3000:]


@ROLE
@pytest.mark.parametrize("kind", ["rsa3072", "p384"])
def test_classic_methods(certlab: CertLab, pkis: dict[str, Pki], native_initiates: bool,
                         kind: str) -> None:
    """charon without RFC 7427: both sides sign with RSA-SHA1 or ECDSA-384 (methods 1, 10)."""
    ends = _ends(pkis[kind], "fqdn")
    certlab.establish(ends, native_initiates=native_initiates, extra_charon=CLASSIC)
    assert certlab.charon is not None
    log = certlab.charon.log_text()
    method = "RSA signature" if kind.startswith("rsa") else "ECDSA-384 signature"
    assert f"authentication of 'native.interop' with {method} successful" in log, log[-3000:]
    assert f"authentication of 'charon.interop' (myself) with {method} successful" in log


def test_rsa_pss_both_ways(certlab: CertLab, pkis: dict[str, Pki]) -> None:
    ends = _ends(pkis["rsa3072"], "dn")
    # charon signs with PSS only when strongswan.conf says so (rsa_pss, default no).
    certlab.establish(ends, native_initiates=True, native_auth="rsa/pss",
                      charon_auth="rsa/pss", extra_charon="rsa_pss = yes")
    assert certlab.charon is not None
    log = certlab.charon.log_text()
    native, charon = dn_str("native", "mobike-vici test"), dn_str("charon", "mobike-vici test")
    assert f"authentication of '{native}' with RSA_EMSA_PSS_SHA2_256_SALT_32 successful" in log
    assert f"authentication of '{charon}' (myself) with RSA_EMSA_PSS_SHA2_256" in log, log[-3000:]


@ROLE
def test_revoked_leaf_is_refused(certlab: CertLab, pkis: dict[str, Pki],
                                 native_initiates: bool) -> None:
    """The initiator's leaf is revoked by the intermediate's CRL on the responder."""
    pki = pkis["p384"]
    ends = _ends(pki, "fqdn")
    initiator_leaf = ends.native if native_initiates else ends.charon
    revoked = (crl(pki.intermediate, (initiator_leaf,)),)
    if native_initiates:
        certlab.start(ends, native_initiates=True, charon_crls=revoked)
        assert certlab.charon is not None and certlab.daemon is not None
        failed = certlab.daemon.wait_event(named("auth_failed"), ESTABLISH_TIMEOUT)
        assert failed["reason"] == "rejected_by_peer"
        log = certlab.charon.log_text()
        assert "certificate was revoked" in log, log[-3000:]
    else:
        certlab.start(ends, native_initiates=False, native_crls=revoked)
        assert certlab.charon is not None and certlab.daemon is not None
        with pytest.raises(LabError):
            certlab.charon.initiate(CHILD, ike=CONN, timeout_s=10)
        failed = certlab.daemon.wait_event(named("auth_failed"), ESTABLISH_TIMEOUT)
        assert failed["reason"] == "revoked", failed
        assert "AUTHENTICATION_FAILED" in certlab.charon.log_text()


@ROLE
def test_unknown_ca_is_refused(certlab: CertLab, pkis: dict[str, Pki],
                               native_initiates: bool) -> None:
    """The initiator's chain leads to a root the responder does not trust."""
    ours = pkis["p384"]
    stranger = make_pki("p384", "Stranger", slot=60)
    ends = _ends(ours, "fqdn")
    foreign = stranger.leaf("foreign", dns=("native.interop" if native_initiates
                                            else "charon.interop",), slot=61)
    if native_initiates:
        ends = Ends(foreign, ends.charon, ends.native_id, ends.charon_id,
                    (*ends.native_cas, stranger.intermediate), ends.charon_cas)
        certlab.start(ends, native_initiates=True)
        assert certlab.charon is not None and certlab.daemon is not None
        failed = certlab.daemon.wait_event(named("auth_failed"), ESTABLISH_TIMEOUT)
        assert failed["reason"] == "rejected_by_peer"
        assert "no trusted issuer" in certlab.charon.log_text() or \
            "no issuer certificate found" in certlab.charon.log_text()
    else:
        ends = Ends(ends.native, foreign, ends.native_id, ends.charon_id,
                    ends.native_cas, (*ends.charon_cas, stranger.intermediate))
        certlab.start(ends, native_initiates=False)
        assert certlab.charon is not None and certlab.daemon is not None
        with pytest.raises(LabError):
            certlab.charon.initiate(CHILD, ike=CONN, timeout_s=10)
        failed = certlab.daemon.wait_event(named("auth_failed"), ESTABLISH_TIMEOUT)
        assert failed["reason"] == "unknown_ca", failed
