"""Negotiated suites rendered in strongSwan's proposal syntax (aes128-sha256-x25519)."""

from __future__ import annotations

from ..ikev2.constants import DhId, EncrId, IntegId, PrfId
from ..ikev2.crypto import EspSuite, IkeSuite

_INTEG = {
    IntegId.HMAC_MD5_96: "md5", IntegId.HMAC_SHA1_96: "sha1", IntegId.AES_XCBC_96: "aesxcbc",
    IntegId.HMAC_SHA2_256_128: "sha256", IntegId.HMAC_SHA2_384_192: "sha384",
    IntegId.HMAC_SHA2_512_256: "sha512",
}
_PRF = {
    PrfId.HMAC_MD5: "md5", PrfId.HMAC_SHA1: "sha1", PrfId.AES128_XCBC: "aesxcbc",
    PrfId.HMAC_SHA2_256: "sha256", PrfId.HMAC_SHA2_384: "sha384", PrfId.HMAC_SHA2_512: "sha512",
}
_DH = {
    DhId.MODP_1024: "modp1024", DhId.MODP_1536: "modp1536", DhId.MODP_2048: "modp2048",
    DhId.MODP_3072: "modp3072", DhId.MODP_4096: "modp4096", DhId.ECP_256: "ecp256",
    DhId.ECP_384: "ecp384", DhId.ECP_521: "ecp521", DhId.CURVE_25519: "x25519",
    DhId.CURVE_448: "x448",
}


def _encr(encr: EncrId, bits: int) -> str:
    match encr:
        case EncrId.AES_CBC:
            return f"aes{bits}"
        case EncrId.AES_CTR:
            return f"aes{bits}ctr"
        case EncrId.AES_GCM_8:
            return f"aes{bits}gcm8"
        case EncrId.AES_GCM_12:
            return f"aes{bits}gcm12"
        case EncrId.AES_GCM_16:
            return f"aes{bits}gcm16"
        case EncrId.CHACHA20_POLY1305:
            return "chacha20poly1305"
    return f"encr{int(encr)}"


def ike_suite_name(suite: IkeSuite) -> str:
    parts = [_encr(suite.encr, suite.encr_key_bits)]
    prf = _PRF.get(suite.prf, str(int(suite.prf)))
    if suite.integ is not None:
        integ = _INTEG.get(suite.integ, str(int(suite.integ)))
        parts.append(integ)
        if integ != prf:
            parts.append("prf" + prf)
    else:
        parts.append("prf" + prf)
    parts.append(_DH.get(suite.dh, str(int(suite.dh))))
    return "-".join(parts)


def esp_suite_name(suite: EspSuite) -> str:
    parts = [_encr(suite.encr, suite.encr_key_bits)]
    if suite.integ is not None:
        parts.append(_INTEG.get(suite.integ, str(int(suite.integ))))
    if suite.dh is not None:
        parts.append(_DH.get(suite.dh, str(int(suite.dh))))
    if suite.esn:
        parts.append("esn")
    return "-".join(parts)
