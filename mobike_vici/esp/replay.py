"""The inbound anti-replay window (RFC 4303 §3.4.3) with ESN inference (Appendix A).

The window is one Python int used as a bitmap: bit ``i`` set means sequence
number ``top - i`` has been received and authenticated. RFC 6479 replaces the
shift with a ring of words to avoid moving a multi-word array per packet; a
Python int shifts in one C call, so the straightforward form is also the fast
one here. The bound on the window size keeps that shift cheap.

Accepting a packet is two steps because integrity sits between them
(RFC 4303 §3.4.3): :meth:`ReplayWindow.check` before the ICV is verified,
:meth:`ReplayWindow.update` only after it verified. Nothing here raises on
peer input; :meth:`check` answers False instead.
"""

from __future__ import annotations

DEFAULT_WINDOW = 32
"""swanctl's ``replay_window`` default, in packets."""
MAX_WINDOW = 1 << 15
"""Largest window accepted, in packets (a 4 KiB bitmap)."""

_SEQ32_MAX = (1 << 32) - 1
_SEQ64_MAX = (1 << 64) - 1
# With anti-replay disabled there is no window to infer the ESN high half
# from; inferring "nearest to the highest sequence number seen" is the same
# rule with half the 32-bit space as the window.
_ESN_INFER_NO_WINDOW = 1 << 31


class ReplayWindow:
    """Sliding window over authenticated sequence numbers; ``size`` 0 disables checks.

    Sequence numbers here are full ones: 32-bit, or 64-bit with ``esn``. Zero
    is never valid: the first packet of an SA carries 1 (RFC 4303 §3.3.3).
    """

    __slots__ = ("_bitmap", "_mask", "_max", "esn", "size", "top")

    def __init__(self, size: int = DEFAULT_WINDOW, *, esn: bool = False) -> None:
        if not 0 <= size <= MAX_WINDOW:
            raise ValueError(f"replay window must be 0..{MAX_WINDOW} packets, got {size}")
        self.size = size
        self.esn = esn
        self.top = 0
        """Highest authenticated sequence number so far (0: none yet)."""
        self._bitmap = 0
        self._mask = (1 << size) - 1
        self._max = _SEQ64_MAX if esn else _SEQ32_MAX

    def infer(self, seq_lo: int) -> int:
        """The full sequence number for the 32 bits on the wire (RFC 4303 Appendix A2.2).

        Without ESN that is ``seq_lo`` itself. The guess is only a guess: a
        wrong high half makes the ICV fail, which is the intended outcome.
        """
        if not self.esn:
            return seq_lo
        window = self.size or _ESN_INFER_NO_WINDOW
        top_hi, top_lo = self.top >> 32, self.top & _SEQ32_MAX
        if top_lo >= window - 1:
            # Case A: the window lies inside one 2**32 subspace.
            seq_hi = top_hi if seq_lo >= top_lo - window + 1 else top_hi + 1
        else:
            # Case B: the window's lower edge sits in the previous subspace.
            if seq_lo >= top_lo - window + 1 + (1 << 32):
                # Before the first subspace there is nothing: read it as ahead.
                seq_hi = top_hi - 1 if top_hi else top_hi
            else:
                seq_hi = top_hi
        return (seq_hi << 32) | seq_lo

    def check(self, seq: int) -> bool:
        """True if ``seq`` may be new: not zero, not seen, not left of the window."""
        if seq == 0 or seq > self._max:
            return False
        top = self.top
        if seq > top or not self.size:
            return True
        offset = top - seq
        return offset < self.size and not (self._bitmap >> offset) & 1

    def update(self, seq: int) -> None:
        """Record an authenticated ``seq`` that passed :meth:`check`."""
        top = self.top
        if seq > top:
            shift = seq - top
            # Guard the shift: a jump of 2**40 must not build a 2**40-bit int.
            if shift < self.size:
                self._bitmap = ((self._bitmap << shift) | 1) & self._mask
            else:
                self._bitmap = 1 & self._mask
            self.top = seq
        elif top - seq < self.size:
            self._bitmap |= 1 << (top - seq)
