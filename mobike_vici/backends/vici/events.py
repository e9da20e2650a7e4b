"""What the VICI backend reports: charon's IKE/CHILD_SAs as typed records, and changes to them.

Frozen, keyword-only dataclasses with one base class (``ViciEvent``). The SA
table (``table.py``) produces the SA events; the client (``session.py``) adds
``ViciConnected`` / ``ViciDisconnected``. ``ike_spi`` is the event stream's
``"<spi_i>_<spi_r>"`` hex form. Nothing here carries key material.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...types import Path


@dataclass(frozen=True, kw_only=True, slots=True)
class ChildSaInfo:
    """One CHILD_SA as charon lists it (``list-sas`` ``child-sas`` entry)."""

    name: str
    """CHILD_SA config name."""
    unique_id: int
    """charon's unique id: stable for the life of this CHILD_SA, new after a rekey."""
    state: str
    """charon's state name, e.g. INSTALLED, REKEYING."""
    mode: str
    """TUNNEL, TRANSPORT, ..."""
    protocol: str
    """ESP or AH."""
    encap: bool
    """UDP encapsulation (NAT-T, forced, or kernel-libipsec)."""
    spi_in: str
    spi_out: str
    """SPIs in charon's hex form (no key material)."""
    local_ts: tuple[str, ...]
    remote_ts: tuple[str, ...]
    proposal: str = ""
    """The negotiated algorithms as swanctl --list-sas writes them (e.g.
    ``AES_GCM_16-128/CURVE_25519``); empty when charon did not say."""


@dataclass(frozen=True, kw_only=True, slots=True)
class IkeSaInfo:
    """One IKE_SA as charon lists it, with its CHILD_SAs ordered by unique id."""

    conn: str
    """Connection (IKE_SA config) name."""
    ike_spi: str
    """``<spi_i>_<spi_r>`` in hex: the table key."""
    unique_id: int
    state: str
    path: Path
    """Where the IKE_SA lives now (local and remote address and port)."""
    initiator: bool
    """True when charon is the original initiator. charon's own flag names whoever
    initiated the last IKE rekey; the table keeps the first one it saw instead."""
    local_id: str
    remote_id: str
    nat_local: bool = False
    nat_remote: bool = False
    virtual_ips: tuple[str, ...] = ()
    """Virtual IPs charon got (local) or handed out (remote)."""
    children: tuple[ChildSaInfo, ...] = ()
    proposal: str = ""
    """As for ``ChildSaInfo.proposal``, e.g. ``AES_CBC-128/HMAC_SHA2_256_128/...``."""

    def child(self, unique_id: int) -> ChildSaInfo | None:
        for child in self.children:
            if child.unique_id == unique_id:
                return child
        return None


@dataclass(frozen=True, kw_only=True, slots=True)
class ViciEvent:
    """Base class of everything the VICI backend reports."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ViciConnected(ViciEvent):
    uri: str
    """The VICI socket we are attached to."""
    daemon: str = ""
    """charon's ``version`` answer, e.g. ``charon 5.9.8``."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ViciDisconnected(ViciEvent):
    uri: str
    reason: str
    """Why the session ended (socket error text, or ``closed`` on shutdown)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SaEvent(ViciEvent):
    conn: str
    """Connection name."""
    ike_spi: str
    """``<spi_i>_<spi_r>`` in hex."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SaAdded(SaEvent):
    sa: IkeSaInfo
    """The IKE_SA as first seen; its children follow as ``ChildAdded`` events."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SaRemoved(SaEvent):
    sa: IkeSaInfo
    """The last known state; its children were reported removed just before."""
    reason: str
    """``down`` (ike-updown), ``rekeyed`` (replaced), ``resync`` (gone when we looked again)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SaUpdated(SaEvent):
    old: IkeSaInfo
    new: IkeSaInfo
    """Before and after: endpoints (ike-update, MOBIKE), state or identities changed."""

    @property
    def moved(self) -> bool:
        """True when the endpoints changed: the controller emits ``addresses_updated``."""
        return self.old.path != self.new.path


@dataclass(frozen=True, kw_only=True, slots=True)
class SaRekeyed(SaEvent):
    new_ike_spi: str
    """The new IKE_SA's SPIs; ``ike_spi`` is the old one, now gone from the table."""
    old: IkeSaInfo
    new: IkeSaInfo
    """The new IKE_SA, with the CHILD_SAs it inherited."""
    by_charon: bool = False
    """charon initiated this rekey (its request was answered); False: the peer did."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ChildAdded(SaEvent):
    child: ChildSaInfo


@dataclass(frozen=True, kw_only=True, slots=True)
class ChildRemoved(SaEvent):
    child: ChildSaInfo
    reason: str
    """``down``, ``rekeyed``, ``resync``, ``ike_removed`` (its IKE_SA went away) or
    ``rekey_undone`` (charon had reported it rekeyed, then took it down instead)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class ChildRekeyed(SaEvent):
    old: ChildSaInfo
    new: ChildSaInfo


@dataclass(frozen=True, kw_only=True, slots=True)
class PathChecked(ViciEvent):
    """charon's MOBIKE probed a path of an IKE_SA (its log: ``checking path L - R``).

    Every such line names one of the peer addresses charon knows (ADDITIONAL_*_ADDRESS
    included), which ``list-sas`` never shows."""

    conn: str
    """Connection name (``ikesa-name``)."""
    unique_id: int
    """charon's unique id of the IKE_SA (``ikesa-uniqueid``)."""
    path: Path
    """The local and the peer's endpoint charon sent its check on."""
