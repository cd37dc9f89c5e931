"""The one interface every head-end adapter implements, and the one the gateway offers back.

An adapter is what stands between hangw and the meters of one TDSP: the in-process simulator,
the adapter protocol listener (head-ends dial in), or a ZigBee coordinator. Adapters are found
through the setuptools entry-point group ``hangw.adapters`` and built with
``factory(config: AdapterConfig, clock: IReactorTime, state_dir: Path)``; a ``ValueError`` from the
factory is a configuration error and should name the option.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface


class IAdapterEvents(Interface):
    """What the gateway offers an adapter: where head-end reports go."""

    def provisioning_report(report):
        """Apply a ``adapters.commands.ProvisioningReport``.

        Returns a Deferred that fires once the report is durably recorded (or refused as illegal
        in the device's current status, which is logged and not an error for the adapter).
        It fails with ``ReportRefused`` for a device the adapter's TDSP does not serve.
        """

    def delivery_status(status):
        """Record an ``adapters.commands.DeliveryStatus``; a Deferred as for reports, failing
        with ``ReportRefused`` when the ESI ID is not a meter of the adapter's TDSP."""

    def inbound_frame(frame):
        """Take an ``adapters.commands.InboundFrame`` from a device; a Deferred as for reports.

        It fails with ``ReportRefused`` when the frame is not SE 1.0 the gateway can decode
        (the reason names the field and byte) or the ESI ID is not the adapter's TDSP's.
        """

    def delivery_statuses(statuses, batch_id=""):
        """Record a list of ``DeliveryStatus``es at once (what a fan-out brings back).

        Returns a Deferred firing with one entry per status, in order: None when it was
        recorded, or the reason it was refused (as ``delivery_status`` would have raised
        ``ReportRefused``). The Deferred fails only when nothing could be recorded (the store is
        unreachable). ``batch_id`` is the head-end's id of the batch (statuses' ``tdsp_duns`` name
        the head-end): the gateway records it with the batch's effect, so a batch sent again
        gets the first answer and is applied once. Empty: an adapter that never resends.
        """

    def inbound_frames(frames, batch_id=""):
        """Take a list of ``InboundFrame``s at once; answered as ``delivery_statuses`` is."""

    def meter_event(event):
        """Apply an ``adapters.commands.MeterEvent`` to the meter registry; as for reports."""


class IHeadEndAdapter(Interface):
    """A path to the meters of one TDSP."""

    tdsp_duns = Attribute("The DUNS number of the TDSP whose meters this adapter reaches.")

    def start(events):
        """Begin serving; ``events`` provides IAdapterEvents. Returns a Deferred."""

    def stop():
        """Stop serving and cancel every pending timer. Returns a Deferred."""

    def send(command):
        """Hand over one ``adapters.commands.Command``.

        Returns a Deferred that fires when the head-end has accepted the command (the TDSP
        acknowledgement); it fails if the head-end cannot be reached. Delivery is at-least-once:
        the same ``command_id`` may be sent again after a restart and must not be applied twice.
        """

    def query(query):
        """Ask an ``adapters.commands.Query`` (ping ESI, ping device, read meter) now.

        Returns a Deferred firing with its ``QueryResult`` (``PingResult`` or ``MeterReading``);
        it fails with ``QueryFailed`` (reason given) when the head-end cannot answer.
        """
