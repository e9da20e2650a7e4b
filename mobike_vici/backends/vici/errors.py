"""The exceptions the VICI backend raises: one base, one per way charon can say no."""

from __future__ import annotations


class ViciError(Exception):
    """Base of everything the VICI backend raises on purpose."""


class ViciUnavailable(ViciError):
    """No session to charon right now (not yet connected, or charon went away)."""


class CommandFailed(ViciError):
    """charon answered a command with ``success = no``; the text carries its errmsg."""


class LoadError(ViciError):
    """charon refused part of the configuration; the message names what and why."""
