"""Protocol-buffer text format, as TIDL's meta-architecture files use it: written from and read
into nested dicts whose every field is a list of values (a field may repeat).

edgezoo does not carry TI's schema; tests parse what it writes with TI's own `.proto` where
one is given (EDGEZOO_TIDL_META_ARCH_PROTO).
"""

import re
from collections.abc import Mapping, Sequence
from typing import Any

from edgezoo.errors import ExportVerificationError

Message = dict[str, list[Any]]
"""A parsed message: field name -> its values (scalars, Symbols or Messages)."""


class Symbol(str):
    """An enum value (written unquoted, e.g. CENTER_SIZE)."""


_TOKEN = re.compile(r'\s*(?:(#[^\n]*)|("(?:[^"\\]|\\.)*")|([{}:])|([^\s{}:"#]+))')


def to_prototxt(message: Mapping[str, Any], indent: int = 0) -> str:
    """The text of a message: scalars as `name: value`, messages as `name { ... }`; a list
    value repeats the field."""
    pad = "  " * indent
    lines = []
    for name, value in message.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, Mapping):
                lines.append(f"{pad}{name} {{\n{to_prototxt(item, indent + 1)}{pad}}}\n")
            else:
                lines.append(f"{pad}{name}: {_scalar(item)}\n")
    return "".join(lines)


def _scalar(value: Any) -> str:
    if isinstance(value, Symbol):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, float):
        return repr(float(f"{value:.9g}"))
    return str(value)


def parse_prototxt(text: str) -> Message:
    """The nested fields of a text-format message; ExportVerificationError where the text is
    not one."""
    tokens = [t for t in _tokens(text)]
    message, end = _message(tokens, 0)
    if end != len(tokens):
        raise ExportVerificationError(f"the prototxt has an unmatched '}}' at token {end}")
    return message


def _tokens(text: str) -> list[str]:
    tokens, position = [], 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            if text[position:].strip() == "":
                break
            shown = text[position : position + 30]
            raise ExportVerificationError(
                f"the prototxt cannot be read at character {position}: {shown!r}"
            )
        position = match.end()
        if not match.group(1):
            tokens.append(next(g for g in match.groups()[1:] if g is not None))
    return tokens


def _message(tokens: Sequence[str], start: int) -> tuple[Message, int]:
    message: Message = {}
    i = start
    while i < len(tokens) and tokens[i] != "}":
        name = tokens[i]
        if i + 1 < len(tokens) and tokens[i + 1] == "{":
            value, i = _message(tokens, i + 2)
            if i >= len(tokens):
                raise ExportVerificationError(f"the prototxt's {name} {{ is never closed")
            i += 1
        elif i + 1 < len(tokens) and tokens[i + 1] == ":":
            if i + 2 >= len(tokens):
                raise ExportVerificationError(f"the prototxt's {name}: has no value")
            if tokens[i + 2] == "{":
                value, i = _message(tokens, i + 3)
                i += 1
            else:
                value, i = _value(tokens[i + 2]), i + 3
        else:
            raise ExportVerificationError(
                f"the prototxt has {name!r} where a field (name: value or name {{ }}) belongs"
            )
        message.setdefault(name, []).append(value)
    return message, i


def _value(token: str) -> Any:
    if token.startswith('"'):
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    if token in ("true", "false"):
        return token == "true"
    for kind in (int, float):
        try:
            return kind(token)
        except ValueError:
            pass
    return Symbol(token)
