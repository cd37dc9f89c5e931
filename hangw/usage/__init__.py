"""The usage store: ERCOT LSE interval files in, interval, daily and monthly usage out.

``lse`` parses files (sans-I/O), ``vee`` names the validation flags, ``days`` packs a day's
intervals the way the store keeps them, ``delivery`` and ``pgp`` open zipped and encrypted
deliveries, ``ingest`` loads them into the store, ``reads`` loads midnight register reads,
``dropdir`` watches the TDSPs' drop directories, ``reports`` and ``jobs`` answer usage.
"""
