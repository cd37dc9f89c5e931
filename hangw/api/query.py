"""A request's query parameters, each given at most once.

A parameter given twice (``?esiid=A&esiid=B``, ``?limit=10&limit=abc``) is refused with 422 naming
it, rather than answered for one of the values: the caller would not know which was used, and a
filter it believed narrowed by both would not be.
"""

from __future__ import annotations

from twisted.web.iweb import IRequest

from hangw.problems import InvalidField


def query_args(request: IRequest) -> dict[str, str]:
    """The query parameters by name (text not UTF-8 replaced), each at most once."""
    args: dict[str, str] = {}
    for key, values in request.args.items():
        name = key.decode("utf-8", "replace")
        if len(values) > 1:
            raise InvalidField(
                name, f"query parameter {name!r} is given {len(values)} times; give it once"
            )
        if values:
            args[name] = values[0].decode("utf-8", "replace")
    return args
