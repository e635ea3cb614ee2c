"""Server-side message filters, compiled once into plain closures.

A filter object maps dotted paths to expected values (all must match):

* a scalar matches by strict JSON equality: ``1`` != ``"1"``, ``true`` != ``1``, ``25.0`` == ``25``;
* a string ``"/pattern/"`` is an RE2 regular expression searched in string values
  (RE2 runs in linear time, so no pattern can stall the server);
* a list matches a scalar field equal to any element, or a list field holding every element;
* a missing field, a ``null`` inside the path or an object-valued field never matches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import re2

from .conf import conf
from .exceptions import InvalidFilterError

Predicate = Callable[[Any], bool]
MISSING = object()

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # errors are reported to the client, not to stderr


def is_pattern(value: Any) -> bool:
    return isinstance(value, str) and len(value) >= 2 and value[0] == "/" and value[-1] == "/"


def compile_filters(filters: Any) -> tuple[dict[str, Any] | None, Predicate | None]:
    """Validate ``filters`` and return (normalised filters, predicate); (None, None) clears."""
    if filters is None:
        return None, None
    if not isinstance(filters, dict):
        raise InvalidFilterError("filters must be an object of field paths to values, or null")
    if len(filters) > conf.max_filter_keys:
        raise InvalidFilterError(f"at most {conf.max_filter_keys} filter keys are allowed", limit=conf.max_filter_keys)
    checks = [_compile_entry(key, value) for key, value in filters.items()]

    def predicate(message: Any) -> bool:
        # A plain loop: measurably faster than all() over a generator on the per-message path.
        for check in checks:  # noqa: SIM110
            if not check(message):
                return False
        return True

    return dict(filters), predicate


def _compile_entry(key: str, value: Any) -> Predicate:
    path = _compile_path(key)
    match = _compile_value(key, value)

    def check(message: Any) -> bool:
        field = message
        for name, index in path:
            kind = type(field)
            if kind is dict:
                field = field.get(name, MISSING)
                if field is MISSING:
                    return False
            elif kind is list and index is not None and index < len(field):
                field = field[index]
            else:
                return False
        return match(field)

    return check


def _compile_path(key: str) -> list[tuple[str, int | None]]:
    if not isinstance(key, str) or not key:
        raise InvalidFilterError("filter keys must be non-empty dotted paths")
    if len(key) > conf.max_string_length:
        raise InvalidFilterError(
            f"filter keys may be at most {conf.max_string_length} characters", limit=conf.max_string_length
        )
    segments = key.split(".")
    if len(segments) > conf.max_filter_path_depth:
        raise InvalidFilterError(
            f"filter path {key!r} is deeper than {conf.max_filter_path_depth} segments",
            limit=conf.max_filter_path_depth,
        )
    if "" in segments:
        raise InvalidFilterError(f"filter path {key!r} has an empty segment")
    return [(s, int(s) if s.isdigit() and s.isascii() else None) for s in segments]


def _compile_value(key: str, value: Any) -> Predicate:
    if isinstance(value, list):
        if not value:
            raise InvalidFilterError(f"filter {key!r}: a list must not be empty")
        if len(value) > conf.max_filter_list_length:
            raise InvalidFilterError(
                f"filter {key!r}: lists may hold at most {conf.max_filter_list_length} values",
                limit=conf.max_filter_list_length,
            )
        matchers = [_compile_scalar(key, element) for element in value]

        def match_list(field: Any) -> bool:
            kind = type(field)
            if kind is list:
                return all(any(m(item) for item in field) for m in matchers)
            if kind is dict:
                return False
            return any(m(field) for m in matchers)

        return match_list
    return _compile_scalar(key, value)


def _compile_scalar(key: str, value: Any) -> Predicate:
    if isinstance(value, (dict, list)):
        raise InvalidFilterError(f"filter {key!r}: values must be scalars, '/regex/' strings or lists of them")
    if isinstance(value, str) and len(value) > conf.max_string_length:
        raise InvalidFilterError(
            f"filter {key!r}: string longer than {conf.max_string_length} characters", limit=conf.max_string_length
        )
    if is_pattern(value):
        return _compile_pattern(key, value[1:-1])
    if isinstance(value, bool):
        return lambda field: type(field) is bool and field is value
    if isinstance(value, (int, float)):
        return lambda field: type(field) in (int, float) and field == value
    if isinstance(value, str):
        return lambda field: type(field) is str and field == value
    if value is None:
        return lambda field: field is None
    raise InvalidFilterError(f"filter {key!r}: unsupported value")


def _compile_pattern(key: str, pattern: str) -> Predicate:
    if len(pattern) > conf.max_pattern_length:
        raise InvalidFilterError(
            f"filter {key!r}: patterns may be at most {conf.max_pattern_length} characters",
            limit=conf.max_pattern_length,
        )
    try:
        search = re2.compile(pattern, options=_RE2_OPTIONS).search
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise InvalidFilterError(
            f"filter {key!r}: invalid or unsupported regular expression (RE2 syntax, no backreferences "
            f"or look-around): {reason}"
        ) from None
    return lambda field: type(field) is str and search(field) is not None
