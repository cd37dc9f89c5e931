"""The usage store: ERCOT LSE interval files in, interval, daily and monthly usage out.

``lse`` parses files (sans-I/O), ``vee`` names the validation flags, ``days`` packs a day's
intervals the way the store keeps them, ``ingest`` loads parsed files into the store.
"""
