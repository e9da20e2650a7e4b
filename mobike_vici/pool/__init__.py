"""A pool of gateways (RFC 5685 redirect), sans-I/O: the peers' load and where to send
an IKE_SA (``view``), a drain's pace and order (``drain``), a peer's metrics page read
as a load (``load``). The daemon side is ``daemon.pool_service``."""
