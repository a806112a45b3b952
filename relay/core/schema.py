"""Payload validation: a route's schema, compiled once into msgspec types.

A route names either a ``module:Struct`` or a JSON Schema file. Either way
the result is a ``Validator`` holding one typed ``msgspec.json.Decoder``, so
checking a webhook is a single decode pass in C, with msgspec's own error
paths. The decoded value is thrown away: the relay stores and relays the
bytes exactly as received.

The JSON Schema support is a deliberate subset, compiled to msgspec types:

- ``type`` (a name or a list of them), ``enum``, ``const``;
- ``properties``, ``required``, ``additionalProperties`` (true or false);
- ``items`` (one schema for every element), ``minItems``, ``maxItems``;
- ``minLength``, ``maxLength``, ``pattern`` (Python ``re.search``);
- ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``;
- annotations (``title``, ``description``, ``format``, ...) are ignored.

Anything else (``$ref``, ``oneOf``, ...) is refused at start with a
``ValueError`` naming the keyword and its JSON pointer: silently ignoring a
keyword would accept payloads the author meant to reject. Where ``type`` is
absent, structural keywords imply it (``properties`` means an object,
``items`` an array); value constraints without a type are refused as
ambiguous. A ``type: integer`` accepts only JSON integers (not ``1.0``). A
number beyond a double's range (``1e400``) is a ``number`` above every finite
bound.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import sys
from typing import Annotated, Any, Literal, Union

import msgspec

from .errors import BadJson, Invalid

__all__ = ["Validator", "load_schema"]


class Validator:
    """Checks bodies against one type with a decoder built once."""

    __slots__ = ("type", "_decoder")

    def __init__(self, type_: Any) -> None:
        self.type = type_
        self._decoder = msgspec.json.Decoder(type_)

    def validate(self, body: bytes) -> None:
        """Raise ``Invalid`` naming the JSON path, or ``BadJson``; else return."""
        try:
            self._decoder.decode(body)
        except msgspec.ValidationError as exc:
            if not str(exc).startswith(_OUT_OF_RANGE):
                raise Invalid(_reformat(str(exc))) from None
        except msgspec.DecodeError as exc:
            reason = str(exc).removeprefix("JSON is malformed: ")
            raise BadJson(f"body is not valid UTF-8 JSON: {reason}") from None
        else:
            return
        # A number beyond a double's range (1e400) is valid JSON, but msgspec
        # makes no float of it. Check the body again with each such number
        # as the largest double of its sign: it passes or fails every
        # "type" and bound as the number itself does (short of a bound at
        # the largest double itself). The body stored is the one received.
        try:
            self._decoder.decode(_in_double_range(body))
        except msgspec.ValidationError as exc:
            raise Invalid(_reformat(str(exc))) from None
        except msgspec.DecodeError as exc:
            reason = str(exc).removeprefix("JSON is malformed: ")
            raise BadJson(f"body is not valid UTF-8 JSON: {reason}") from None


_OUT_OF_RANGE = "Number out of range"
# A JSON string (skipped whole, so digits inside one are left alone) or a
# number with a fraction or an exponent: the tokens msgspec reads as floats.
_FLOAT_OR_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?[eE][+-]?[0-9]+|-?(?:0|[1-9][0-9]*)\.[0-9]+')
_DOUBLE_MAX = repr(sys.float_info.max).encode()


def _in_double_range(body: bytes) -> bytes:
    """``body`` with each float token beyond a double's range replaced by the
    largest double of its sign; everything else byte for byte."""

    def clamp(match: re.Match[bytes]) -> bytes:
        token = match[0]
        if token[:1] == b'"' or not math.isinf(float(token)):
            return token
        return b"-" + _DOUBLE_MAX if token[:1] == b"-" else _DOUBLE_MAX

    return _FLOAT_OR_STRING.sub(clamp, body)


def load_schema(ref: str, base_dir: str = ".") -> Validator:
    """Compile a route's ``schema`` setting; a ``ValueError`` says what is wrong."""
    path = os.path.join(base_dir, ref)
    if os.path.isfile(path):
        return _from_file(ref, path)
    if _MODULE_REF.fullmatch(ref):
        return _from_module(ref)
    raise ValueError(f"schema {ref!r}: no such file, and not a 'module:Struct' reference")


# --- error messages ------------------------------------------------------

_AT = re.compile(r"(?s)(.*) - at `(\$.*)`")
_FIELD = re.compile(r"field `([^`]*)`")


def _reformat(message: str) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.repository.id`"; the
    # contract's details read "$.repository.id: expected int, got str".
    match = _AT.fullmatch(message)
    text, path = (match[1], match[2]) if match else (message, "$")
    text = _FIELD.sub(r'field "\1"', text).replace("`", "")
    return f"{path}: {text[:1].lower()}{text[1:]}"


# --- module:Struct -------------------------------------------------------

_MODULE_REF = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")


def _from_module(ref: str) -> Validator:
    module_name, _, attr = ref.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"schema {ref!r}: cannot import module {module_name!r} ({exc})") from None
    except Exception as exc:  # the module itself is broken; report it, don't crash start-up
        raise ValueError(f"schema {ref!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from None
    target: Any = module
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ValueError(f"schema {ref!r}: module {module_name!r} has no attribute {attr!r}") from None
    if not (isinstance(target, type) and issubclass(target, msgspec.Struct)):
        raise ValueError(f"schema {ref!r}: {attr!r} is not a msgspec.Struct subclass")
    try:
        return Validator(target)
    except TypeError as exc:
        raise ValueError(f"schema {ref!r}: msgspec cannot decode into it: {exc}") from None


# --- JSON Schema ---------------------------------------------------------


def _from_file(ref: str, path: str) -> Validator:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ValueError(f"schema {ref!r}: cannot read it: {exc.strerror}") from None
    try:
        document = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ValueError(f"schema {ref!r}: not valid JSON: {exc}") from None
    type_ = _Compiler(ref).compile(document, "#")
    try:
        return Validator(type_)
    except TypeError as exc:
        raise ValueError(f"schema {ref!r}: msgspec cannot represent it: {exc}") from None


_TYPES = ("null", "boolean", "integer", "number", "string", "array", "object")

# Keyword -> the types it constrains.
_CONSTRAINTS = {
    "minimum": ("integer", "number"),
    "maximum": ("integer", "number"),
    "exclusiveMinimum": ("integer", "number"),
    "exclusiveMaximum": ("integer", "number"),
    "minLength": ("string",),
    "maxLength": ("string",),
    "pattern": ("string",),
    "items": ("array",),
    "minItems": ("array",),
    "maxItems": ("array",),
    "properties": ("object",),
    "required": ("object",),
    "additionalProperties": ("object",),
}
_SUPPORTED = {"type", "enum", "const", *_CONSTRAINTS}
_ANNOTATIONS = {
    "$schema",
    "$id",
    "$comment",
    "title",
    "description",
    "default",
    "examples",
    "format",
    "readOnly",
    "writeOnly",
    "deprecated",
}
_STRUCTURAL = {"properties": "object", "required": "object", "additionalProperties": "object",
               "items": "array", "minItems": "array", "maxItems": "array"}  # fmt: skip


def _pointer(base: str, *tokens: str) -> str:
    # RFC 6901: "~" and "/" inside a token are escaped.
    return base + "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in tokens)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _Compiler:
    def __init__(self, source: str) -> None:
        self.source = source
        self.structs = 0

    def fail(self, pointer: str, message: str) -> ValueError:
        return ValueError(f"schema {self.source!r}: {message} at {pointer}")

    def compile(self, schema: Any, ptr: str) -> Any:
        if schema is True:
            return Any
        if not isinstance(schema, dict):
            raise self.fail(ptr, "a schema must be an object (or true)")
        for key in schema:
            if key not in _SUPPORTED and key not in _ANNOTATIONS:
                raise self.fail(_pointer(ptr, key), f"unsupported keyword {key!r}")

        types = self.types(schema, ptr)
        for key, applies in _CONSTRAINTS.items():
            if key in schema and types is not None and not set(applies) & set(types):
                raise self.fail(_pointer(ptr, key), f"{key!r} does not apply to type {' or '.join(types)}")

        base = Any if types is None else self.union([self.member(t, schema, ptr) for t in types], ptr)
        if "enum" in schema or "const" in schema:
            return self.literal(schema, ptr, base)
        return base

    def types(self, schema: dict[str, Any], ptr: str) -> list[str] | None:
        declared = schema.get("type")
        if declared is None:
            implied = {_STRUCTURAL[k] for k in schema if k in _STRUCTURAL}
            if len(implied) > 1:
                raise self.fail(ptr, f"keywords imply several types ({', '.join(sorted(implied))}); give a 'type'")
            loose = [k for k in schema if k in _CONSTRAINTS and k not in _STRUCTURAL]
            if loose and not implied:
                raise self.fail(_pointer(ptr, loose[0]), f"{loose[0]!r} needs a 'type' to apply to")
            return list(implied) or None
        names = [declared] if isinstance(declared, str) else declared
        if not isinstance(names, list) or not names:
            raise self.fail(_pointer(ptr, "type"), "'type' must be a type name or a non-empty list of them")
        for name in names:
            if name not in _TYPES:
                raise self.fail(_pointer(ptr, "type"), f"unknown type {name!r}")
        if "integer" in names and "number" in names:
            names = [n for n in names if n != "integer"]  # every integer is a number
        return list(dict.fromkeys(names))

    def member(self, name: str, schema: dict[str, Any], ptr: str) -> Any:
        if name == "null":
            return None
        if name == "boolean":
            return bool
        if name in ("integer", "number"):
            return self.numeric(int if name == "integer" else float, schema, ptr)
        if name == "string":
            meta = {
                "min_length": self.count(schema, "minLength", ptr),
                "max_length": self.count(schema, "maxLength", ptr),
                "pattern": self.pattern(schema, ptr),
            }
            return self.annotate(str, meta)
        if name == "array":
            items = schema.get("items", True)
            if isinstance(items, list):
                raise self.fail(_pointer(ptr, "items"), "tuple-form 'items' (a list of schemas) is not supported")
            element = self.compile(items, _pointer(ptr, "items"))
            meta = {"min_length": self.count(schema, "minItems", ptr), "max_length": self.count(schema, "maxItems", ptr)}
            return self.annotate(list[element], meta)  # type: ignore[valid-type]
        return self.object(schema, ptr)

    def numeric(self, kind: type, schema: dict[str, Any], ptr: str) -> Any:
        meta: dict[str, Any] = {}
        for key, arg in (("minimum", "ge"), ("maximum", "le"), ("exclusiveMinimum", "gt"), ("exclusiveMaximum", "lt")):
            if key not in schema:
                continue
            bound = schema[key]
            if not _is_number(bound):
                # Draft 4's boolean exclusiveMinimum lands here too.
                raise self.fail(_pointer(ptr, key), f"{key!r} must be a number")
            if kind is int and not float(bound).is_integer():
                # msgspec takes only integer bounds on int; move a fractional
                # bound to the nearest integer that admits the same values.
                bound = math.ceil(bound) if arg in ("ge", "lt") else math.floor(bound)
            meta[arg] = int(bound) if kind is int else bound
        return self.annotate(kind, meta)

    def count(self, schema: dict[str, Any], key: str, ptr: str) -> int | None:
        if key not in schema:
            return None
        if not _is_count(schema[key]):
            raise self.fail(_pointer(ptr, key), f"{key!r} must be a non-negative integer")
        return schema[key]

    def pattern(self, schema: dict[str, Any], ptr: str) -> str | None:
        if "pattern" not in schema:
            return None
        value = schema["pattern"]
        try:
            re.compile(value)
        except (re.error, TypeError) as exc:
            raise self.fail(_pointer(ptr, "pattern"), f"'pattern' is not a valid regular expression ({exc})") from None
        return value

    @staticmethod
    def annotate(kind: Any, meta: dict[str, Any]) -> Any:
        meta = {k: v for k, v in meta.items() if v is not None}
        return Annotated[kind, msgspec.Meta(**meta)] if meta else kind

    def object(self, schema: dict[str, Any], ptr: str) -> Any:
        properties = schema.get("properties", {})
        if not isinstance(properties, dict):
            raise self.fail(_pointer(ptr, "properties"), "'properties' must be an object")
        required = schema.get("required", [])
        if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
            raise self.fail(_pointer(ptr, "required"), "'required' must be a list of property names")
        additional = schema.get("additionalProperties", True)
        if additional == {}:
            additional = True
        if not isinstance(additional, bool):
            raise self.fail(
                _pointer(ptr, "additionalProperties"), "'additionalProperties' must be true or false (a schema is not supported)"
            )
        if not properties and not required and additional:
            return dict[str, Any]

        # Field names are positional placeholders and ``rename`` carries the
        # real property names, so "repo-name", "class" or "1st" all work and
        # msgspec's error paths show the names the sender used.
        fields: list[tuple[Any, ...]] = []
        rename: dict[str, str] = {}
        names = list(properties) + [r for r in dict.fromkeys(required) if r not in properties]
        for i, name in enumerate(names):
            field = f"f{i}"
            rename[field] = name
            kind = self.compile(properties[name], _pointer(ptr, "properties", name)) if name in properties else Any
            fields.append((field, kind) if name in required else (field, kind, msgspec.UNSET))
        self.structs += 1
        return msgspec.defstruct(
            f"Schema{self.structs}",
            fields,
            rename=rename,
            kw_only=True,  # required and optional properties interleave freely
            forbid_unknown_fields=not additional,
        )

    def union(self, members: list[Any], ptr: str) -> Any:
        if len(members) == 1:
            return members[0]
        kind = Union[tuple(members)]
        try:
            msgspec.json.Decoder(kind)
        except TypeError as exc:
            raise self.fail(_pointer(ptr, "type"), f"msgspec cannot decode this combination of types ({exc})") from None
        return kind

    def literal(self, schema: dict[str, Any], ptr: str, base: Any) -> Any:
        if "enum" in schema:
            values = schema["enum"]
            where = _pointer(ptr, "enum")
            if not isinstance(values, list) or not values:
                raise self.fail(where, "'enum' must be a non-empty list")
        else:
            values, where = [schema["const"]], _pointer(ptr, "const")
        if "enum" in schema and "const" in schema:
            values = [v for v in values if _same(v, schema["const"])]
        for value in values:
            if not (value is None or isinstance(value, (bool, int, str))):
                raise self.fail(where, f"value {value!r} is not supported (only strings, integers, booleans and null)")
        # A Literal cannot carry Meta constraints, so apply "type" and the
        # constraints now, to the listed values, and keep those that pass.
        kept = [v for v in values if _accepts(base, v)]
        if not kept:
            raise self.fail(where, "no listed value satisfies the schema's other keywords")
        return Literal[tuple(kept)]


def _same(a: Any, b: Any) -> bool:
    return a == b and type(a) is type(b)


def _accepts(kind: Any, value: Any) -> bool:
    try:
        msgspec.convert(value, kind, strict=True)
    except msgspec.ValidationError:
        return False
    return True
