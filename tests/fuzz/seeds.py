"""Seed inputs from the project's real captures: charon's messages and the keys of that run."""

from __future__ import annotations

from pathlib import Path

IKEV2_FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "ikev2" / "fixtures"
SWANCTL_EXAMPLES = Path(__file__).resolve().parents[2] / "swanctl"

CHARON_MESSAGES = (
    "charon-ike-sa-init-request", "charon-ike-sa-init-response",
    "charon-ike-auth-request", "charon-ike-auth-response",
    "charon-informational-request", "charon-informational-response",
)


def charon_message(name: str) -> bytes:
    return bytes.fromhex((IKEV2_FIXTURES / f"{name}.hex").read_text().replace("\n", ""))


def charon_messages() -> list[bytes]:
    return [charon_message(name) for name in CHARON_MESSAGES]


def example_configs() -> list[bytes]:
    return [p.read_bytes() for p in sorted(SWANCTL_EXAMPLES.rglob("*.conf"))]
