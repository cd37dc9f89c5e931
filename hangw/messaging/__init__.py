"""HAN messaging: prices, load control and text to ESI IDs, tracked delivery by delivery.

- ``categories``: the six SMT event categories, the seven status codes, and how SE 1.0 answers
  (Report Event Status, Message Confirmation, head-end delivery states) map onto them;
- ``requests``: a request body checked and turned into the SE 1.0 frame every target gets;
- ``service``: accepting requests and cancellations, the fan-out outbox, applying what comes
  back, the timers that fail what never settles;
- ``log``: the message log, as JSON pages or as CSV with the SMT columns.
"""
