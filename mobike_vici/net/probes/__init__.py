"""Path probes that need nothing from charon: ICMP echo and an authenticated UDP echo.

``wire`` holds the pure packet formats, ``bypass`` the socket options and the one
policy-routing rule that keep probes out of the tunnel, ``icmp`` and ``udp_echo``
the asyncio probers (and the UDP echo responder). The controller sends a probe per
``PathManager.probes_to_send`` and feeds every reply to ``on_probe_reply``.
"""
