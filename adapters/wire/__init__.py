"""The adapter protocol: TDSP head-ends dial in over TLS and exchange framed JSON messages.

``protocol`` is the message layer without I/O, ``gateway`` the hangwd side (listener and the
per-TDSP adapter), ``headend`` the client library a head-end (or hangw-sim) uses.
Specification: docs/adapter-protocol.md.
"""
