"""Turn an HTTP request into PVE's parameter set (pve-http-server AnyEvent.pm:890-947).

Form bodies and query strings: `+` is a space, repeated keys become a list. A JSON body keeps its
types (so `true` is a real boolean). The query string is merged in for every method.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from werkzeug.datastructures import MultiDict
from werkzeug.wrappers import Request

from provision.sim.errors import PveError


@dataclass(frozen=True)
class ParsedRequest:
    params: dict[str, Any]
    from_json: bool


def parse(request: Request) -> ParsedRequest:
    params: dict[str, Any] = {}
    _merge(params, request.args)
    from_json = False
    if request.method in ("POST", "PUT", "DELETE"):
        if request.mimetype == "application/json":
            body = request.get_data(as_text=True)
            if body.strip():
                try:
                    decoded = json.loads(body)
                except ValueError:
                    raise PveError.params({"body": "unable to parse JSON body"}) from None
                if not isinstance(decoded, dict):
                    raise PveError.params({"body": "JSON body must be an object"})
                for key, value in decoded.items():
                    _add(params, key, value)
            from_json = True
        else:
            _merge(params, request.form)
    return ParsedRequest(params, from_json)


def _merge(params: dict[str, Any], values: MultiDict[str, str]) -> None:
    for key in values:
        for value in values.getlist(key):
            _add(params, key, value)


def _add(params: dict[str, Any], key: str, value: Any) -> None:
    if key not in params:
        params[key] = value
    elif isinstance(params[key], list):
        params[key].append(value)
    else:
        params[key] = [params[key], value]
