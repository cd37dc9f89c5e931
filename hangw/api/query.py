"""A request's query parameters: only those its path takes, each given at most once.

A parameter given twice (``?esiid=A&esiid=B``, ``?limit=10&limit=abc``) is refused with 422 naming
it, rather than answered for one of the values: the caller would not know which was used, and a
filter it believed narrowed by both would not be. A parameter the path does not take (a misspelt
filter, ``?esid=``) is refused the same way: answered as if it were not there, a filtered log or
report would come back whole.
"""

from __future__ import annotations

from collections.abc import Collection

from twisted.web.iweb import IRequest

from hangw.problems import InvalidField

#: The longest parameter name a refusal repeats whole.
_SHOWN = 60


def query_args(request: IRequest, allowed: Collection[str]) -> dict[str, str]:
    """The query parameters by name (text not UTF-8 replaced), each at most once and each one
    of ``allowed``."""
    args: dict[str, str] = {}
    for key, values in request.args.items():
        name = key.decode("utf-8", "replace")
        shown = name if len(name) <= _SHOWN else name[:_SHOWN] + "..."
        if name not in allowed:
            takes = ", ".join(sorted(allowed)) or "none"
            raise InvalidField(
                shown, f"unknown query parameter {shown!r}; this path takes: {takes}"
            )
        if len(values) > 1:
            raise InvalidField(
                name, f"query parameter {name!r} is given {len(values)} times; give it once"
            )
        if values:
            args[name] = values[0].decode("utf-8", "replace")
    return args
