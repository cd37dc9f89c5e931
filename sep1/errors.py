"""The two ways sep1 says no: a value out of its SE 1.0 range, and bytes that are not a frame."""

from __future__ import annotations

from typing import Any

__all__ = ["DecodeError", "FieldValueError"]


class FieldValueError(ValueError):
    """A message field holds a value SE 1.0 does not allow; ``field`` names it."""

    def __init__(self, message_type: str, field: str, reason: str) -> None:
        self.message_type = message_type
        self.field = field
        self.reason = reason
        super().__init__(f"{message_type}.{field}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        # args holds only the joined text; copy and pickle must call __init__ with the three parts
        return type(self), (self.message_type, self.field, self.reason), self.__dict__


class DecodeError(ValueError):
    """Bytes that do not decode to a SE 1.0 frame; says where decoding stopped and why.

    ``cluster_id`` and ``command_id`` are None when decoding stopped before they were known;
    ``field`` is None when the header (not a payload field) was at fault; ``offset`` is the
    byte position in the frame where the fault begins.
    """

    def __init__(
        self,
        reason: str,
        *,
        cluster_id: int | None = None,
        command_id: int | None = None,
        command: str | None = None,
        field: str | None = None,
        offset: int | None = None,
    ) -> None:
        self.reason = reason
        self.cluster_id = cluster_id
        self.command_id = command_id
        self.command = command
        self.field = field
        self.offset = offset
        where = []
        if cluster_id is not None:
            where.append(f"cluster 0x{cluster_id:04X}")
        if command_id is not None:
            name = f" ({command})" if command else ""
            where.append(f"command 0x{command_id:02X}{name}")
        if field is not None:
            where.append(f"field {field}")
        if offset is not None:
            where.append(f"byte {offset}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {reason}" if prefix else reason)
