"""Small programs the lab runs inside a namespace by path (``sys.executable FILE ...``):
the stream, the TCP transfer, the ESP sniffer/injector and the mover."""
