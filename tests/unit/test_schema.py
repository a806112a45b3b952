"""Route schemas: JSON Schema files and module:Struct references."""

from __future__ import annotations

import json
import textwrap

import msgspec
import pytest

from relay.core.errors import BadJson, Invalid
from relay.core.schema import Validator, load_schema

GITHUB_PUSH_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "A GitHub push, as much as the relay cares about",
    "type": "object",
    "required": ["ref", "repository", "commits"],
    "properties": {
        "ref": {"type": "string", "pattern": "^refs/", "minLength": 6, "maxLength": 255},
        "before": {"type": "string", "minLength": 40, "maxLength": 40},
        "forced": {"type": "boolean"},
        "base_ref": {"type": ["string", "null"]},
        "repository": {
            "type": "object",
            "required": ["id", "full_name"],
            "properties": {
                "id": {"type": "integer", "minimum": 1},
                "full_name": {"type": "string"},
                "visibility": {"enum": ["public", "private", "internal"]},
                "stargazers_count": {"type": "integer", "minimum": 0, "maximum": 1000000000},
            },
        },
        "commits": {
            "type": "array",
            "maxItems": 2048,
            "items": {
                "type": "object",
                "required": ["id"],
                "additionalProperties": False,
                "properties": {"id": {"type": "string"}, "distinct": {"type": "boolean"}, "message": {"type": "string"}},
            },
        },
        "sender": {"type": "object"},
    },
}

GOOD_PUSH = {
    "ref": "refs/heads/main",
    "before": "6113728f27ae82c7b1a177c8d03f9e96e0adf246",
    "forced": False,
    "base_ref": None,
    "repository": {"id": 1296269, "full_name": "octocat/Hello-World", "visibility": "public", "extra": [1, 2]},
    "commits": [{"id": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c", "distinct": True, "message": "Update README"}],
    "sender": {"login": "octocat", "anything": {"goes": True}},
}


def write(tmp_path, schema, name="schema.json"):
    path = tmp_path / name
    path.write_text(json.dumps(schema))
    return str(path)


def push(**changes):
    body = json.loads(json.dumps(GOOD_PUSH))
    body.update(changes)
    return json.dumps(body).encode()


def invalid(validator, body: bytes) -> str:
    with pytest.raises(Invalid) as info:
        validator.validate(body)
    assert info.value.status == 422
    return info.value.detail


@pytest.fixture
def github(tmp_path):
    return load_schema(write(tmp_path, GITHUB_PUSH_SCHEMA))


def test_a_matching_github_push_passes_and_the_body_is_untouched(github):
    body = push()
    before = bytes(body)
    assert github.validate(body) is None
    assert body == before


def test_a_schema_path_is_relative_to_base_dir(tmp_path):
    write(tmp_path, GITHUB_PUSH_SCHEMA, "github.json")
    assert load_schema("github.json", base_dir=str(tmp_path)).validate(push()) is None


def test_wrong_type_names_the_nested_path_in_msgspec_style(github):
    body = push(repository={"id": "1296269", "full_name": "octocat/Hello-World"})
    assert invalid(github, body) == "$.repository.id: expected int, got str"


def test_an_array_item_error_names_its_index(github):
    commits = [{"id": "a"}, {"id": 7}]
    assert invalid(github, push(commits=commits)) == "$.commits[1].id: expected str, got int"


def test_missing_required_property_names_the_object_and_the_field(github):
    assert invalid(github, push(repository={"id": 1})) == '$.repository: object missing required field "full_name"'
    body = json.loads(push())
    del body["ref"]
    assert invalid(github, json.dumps(body).encode()) == '$: object missing required field "ref"'


def test_additional_properties_false_rejects_unknown_fields_and_absent_allows_them(github):
    commits = [{"id": "a", "author": "x"}]
    assert invalid(github, push(commits=commits)) == '$.commits[0]: object contains unknown field "author"'
    assert github.validate(push(sender={"login": "x", "new": 1})) is None  # additionalProperties absent


def test_the_wrong_top_level_type_is_reported_at_the_root(github):
    assert invalid(github, b"[1, 2]") == "$: expected object, got array"


def test_malformed_json_is_bad_json_not_invalid(github):
    with pytest.raises(BadJson) as info:
        github.validate(b'{"ref": "refs/heads/main",')
    assert info.value.status == 400
    assert info.value.detail.startswith("body is not valid UTF-8 JSON")
    with pytest.raises(BadJson):
        github.validate(b'{"ref": "\xff"}')


@pytest.mark.parametrize(
    "schema, good, bad, detail",
    [
        ({"type": "string"}, '"x"', "1", "$: expected str, got int"),
        ({"type": "integer"}, "3", "3.5", "$: expected int, got float"),
        ({"type": "number"}, "3", '"3"', "$: expected float, got str"),
        ({"type": "boolean"}, "true", "1", "$: expected bool, got int"),
        ({"type": "null"}, "null", "0", "$: expected null, got int"),
        ({"type": "array"}, "[1, \"a\"]", "{}", "$: expected array, got object"),
        ({"type": "object"}, '{"a": 1}', "[]", "$: expected object, got array"),
        ({"type": ["string", "null"]}, "null", "1", "$: expected str | null, got int"),
        ({"type": ["integer", "number"]}, "1.5", '"1"', "$: expected float, got str"),
        ({"type": "integer", "minimum": 1}, "1", "0", "$: expected int >= 1"),
        ({"type": "integer", "maximum": 10}, "10", "11", "$: expected int <= 10"),
        ({"type": "number", "minimum": 0.5}, "0.5", "0.25", "$: expected float >= 0.5"),
        ({"type": "number", "exclusiveMinimum": 0}, "0.1", "0", "$: expected float > 0.0"),
        ({"type": "number", "exclusiveMaximum": 1}, "0.9", "1", "$: expected float < 1.0"),
        ({"type": "integer", "minimum": 1.5}, "2", "1", "$: expected int >= 2"),
        ({"type": "string", "minLength": 2}, '"ab"', '"a"', "$: expected str of length >= 2"),
        ({"type": "string", "maxLength": 2}, '"ab"', '"abc"', "$: expected str of length <= 2"),
        ({"type": "string", "pattern": "^v[0-9]+$"}, '"v12"', '"12"', "$: expected str matching regex '^v[0-9]+$'"),
        ({"type": "array", "items": {"type": "integer"}}, "[1, 2]", '[1, "2"]', "$[1]: expected int, got str"),
        ({"type": "array", "minItems": 1}, "[0]", "[]", "$: expected array of length >= 1"),
        ({"type": "array", "maxItems": 1}, "[0]", "[0, 1]", "$: expected array of length <= 1"),
        ({"enum": ["push", "pull_request"]}, '"push"', '"fork"', "$: invalid enum value 'fork'"),
        ({"enum": [1, 2, None]}, "null", "3", "$: invalid enum value 3"),
        ({"enum": [True]}, "true", "false", "$: invalid enum value False"),
        ({"const": "v1"}, '"v1"', '"v2"', "$: invalid enum value 'v2'"),
        ({"type": "string", "enum": ["a", "bb", 3], "minLength": 2}, '"bb"', '"a"', "$: invalid enum value 'a'"),
        ({"type": "object", "properties": {"a": {"type": "string"}}}, "{}", '{"a": null}', "$.a: expected str, got null"),
        ({"properties": {"a": {"type": "string"}}}, '{"a": "x"}', '"x"', "$: expected object, got str"),
        ({"type": "object", "required": ["a"]}, '{"a": [1]}', "{}", '$: object missing required field "a"'),
        ({"type": "object", "additionalProperties": False}, "{}", '{"a": 1}', '$: object contains unknown field "a"'),
        ({"type": "object", "additionalProperties": True, "properties": {}}, '{"a": 1}', "1", "$: expected object, got int"),
        (True, "[]", None, None),
        ({"description": "anything", "format": "uri"}, '"not a uri"', None, None),
    ],
)
def test_every_supported_keyword(tmp_path, schema, good, bad, detail):
    validator = load_schema(write(tmp_path, schema))
    assert validator.validate(good.encode()) is None
    if bad is not None:
        assert invalid(validator, bad.encode()) == detail


def test_property_names_that_are_not_python_identifiers_work_and_keep_their_spelling(tmp_path):
    schema = {
        "type": "object",
        "required": ["repo-name", "class", "1st", "x.y"],
        "properties": {
            "repo-name": {"type": "string"},
            "class": {"type": "integer"},
            "1st": {"type": "boolean"},
            "x.y": {"type": "null"},
            "with space": {"type": "object", "required": ["a/b"], "properties": {"a/b": {"type": "integer"}}},
        },
        "additionalProperties": False,
    }
    validator = load_schema(write(tmp_path, schema))
    good = {"repo-name": "r", "class": 1, "1st": True, "x.y": None, "with space": {"a/b": 2}}
    assert validator.validate(json.dumps(good).encode()) is None
    assert invalid(validator, json.dumps(dict(good, **{"repo-name": 1})).encode()) == "$.repo-name: expected str, got int"
    missing = {k: v for k, v in good.items() if k != "1st"}
    assert invalid(validator, json.dumps(missing).encode()) == '$: object missing required field "1st"'
    nested = dict(good, **{"with space": {"a/b": "2"}})
    assert invalid(validator, json.dumps(nested).encode()) == "$.with space.a/b: expected int, got str"
    # The placeholder field names never leak: "f0" is not a property.
    assert invalid(validator, json.dumps(dict(good, f0="x")).encode()) == '$: object contains unknown field "f0"'


def test_required_and_optional_properties_may_come_in_any_order(tmp_path):
    schema = {"type": "object", "required": ["z"], "properties": {"a": {"type": "integer"}, "z": {"type": "integer"}}}
    validator = load_schema(write(tmp_path, schema))
    assert validator.validate(b'{"z": 1}') is None
    assert validator.validate(b'{"z": 1, "a": 2}') is None


@pytest.mark.parametrize(
    "schema, message",
    [
        ({"type": "object", "properties": {"a": {"oneOf": [{"type": "string"}]}}}, "unsupported keyword 'oneOf' at #/properties/a/oneOf"),
        ({"$ref": "#/$defs/x"}, "unsupported keyword '$ref' at #/$ref"),
        ({"type": "array", "items": {"type": "object", "patternProperties": {}}}, "unsupported keyword 'patternProperties' at #/items/patternProperties"),
        ({"properties": {"a/b~c": {"uniqueItems": True}}}, "unsupported keyword 'uniqueItems' at #/properties/a~1b~0c/uniqueItems"),
        ({"type": "strin"}, "unknown type 'strin' at #/type"),
        ({"type": "string", "minimum": 1}, "'minimum' does not apply to type string at #/minimum"),
        ({"minLength": 1}, "'minLength' needs a 'type' to apply to at #/minLength"),
        ({"properties": {}, "items": {}}, "keywords imply several types (array, object); give a 'type' at #"),
        ({"type": "object", "additionalProperties": {"type": "string"}}, "'additionalProperties' must be true or false (a schema is not supported) at #/additionalProperties"),
        ({"type": "array", "items": [{"type": "string"}]}, "tuple-form 'items' (a list of schemas) is not supported at #/items"),
        ({"type": "integer", "exclusiveMinimum": True}, "'exclusiveMinimum' must be a number at #/exclusiveMinimum"),
        ({"type": "string", "minLength": -1}, "'minLength' must be a non-negative integer at #/minLength"),
        ({"type": "string", "pattern": "("}, "'pattern' is not a valid regular expression"),
        ({"enum": [1.5]}, "value 1.5 is not supported (only strings, integers, booleans and null) at #/enum"),
        ({"enum": []}, "'enum' must be a non-empty list at #/enum"),
        ({"type": "integer", "enum": ["a"]}, "no listed value satisfies the schema's other keywords at #/enum"),
        ({"type": "object", "required": "a"}, "'required' must be a list of property names at #/required"),
        ({"type": ["object", "array", "null"], "properties": {"a": {"type": "string"}}, "items": {}}, None),
        (False, "a schema must be an object (or true) at #"),
    ],
)
def test_unsupported_or_broken_schemas_are_refused_at_start_naming_keyword_and_pointer(tmp_path, schema, message):
    ref = write(tmp_path, schema)
    if message is None:  # a supported combination, for contrast
        load_schema(ref).validate(b'{"a": "x"}')
        return
    with pytest.raises(ValueError) as info:
        load_schema(ref)
    assert message in str(info.value)
    assert ref in str(info.value)


def test_a_missing_or_unparsable_schema_file_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_schema("schemas/nope.json", base_dir=str(tmp_path))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_schema("broken.json", base_dir=str(tmp_path))


# --- module:Struct ---------------------------------------------------------

MODULE = """
    from typing import Annotated
    import msgspec

    class Repository(msgspec.Struct):
        id: Annotated[int, msgspec.Meta(ge=1)]
        full_name: str

    class Push(msgspec.Struct, forbid_unknown_fields=False):
        ref: str
        repository: Repository
        commits: list[dict] = []

    class Hooks:
        class Ping(msgspec.Struct, rename={"hook_id": "hook-id"}):
            hook_id: int

    NOT_A_STRUCT = dict
"""


@pytest.fixture
def hooks_module(tmp_path, monkeypatch):
    package = tmp_path / "mods"
    package.mkdir()
    (package / "relay_test_hooks.py").write_text(textwrap.dedent(MODULE))
    (package / "relay_test_broken.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(package))
    return "relay_test_hooks"


def test_a_struct_reference_validates_with_the_same_path_style(hooks_module):
    validator = load_schema(f"{hooks_module}:Push")
    assert isinstance(validator, Validator)
    assert validator.validate(b'{"ref": "refs/heads/main", "repository": {"id": 1, "full_name": "o/r"}}') is None
    body = b'{"ref": "refs/heads/main", "repository": {"id": 0, "full_name": "o/r"}}'
    assert invalid(validator, body) == "$.repository.id: expected int >= 1"
    assert invalid(validator, b'{"ref": 1}') == "$.ref: expected str, got int"


def test_a_nested_struct_attribute_and_its_renames_work(hooks_module):
    validator = load_schema(f"{hooks_module}:Hooks.Ping")
    assert validator.validate(b'{"hook-id": 42}') is None
    assert invalid(validator, b'{"hook-id": "42"}') == "$.hook-id: expected int, got str"


@pytest.mark.parametrize(
    "ref, message",
    [
        ("relay_no_such_module_xyz:Push", "cannot import module 'relay_no_such_module_xyz'"),
        ("relay_test_hooks:Missing", "module 'relay_test_hooks' has no attribute 'Missing'"),
        ("relay_test_hooks:NOT_A_STRUCT", "'NOT_A_STRUCT' is not a msgspec.Struct subclass"),
        ("relay_test_hooks:Hooks", "'Hooks' is not a msgspec.Struct subclass"),
        ("relay_test_broken:Push", "importing 'relay_test_broken' failed: RuntimeError: boom at import"),
    ],
)
def test_a_bad_struct_reference_is_a_clear_value_error(hooks_module, ref, message):
    with pytest.raises(ValueError) as info:
        load_schema(ref)
    assert message in str(info.value)


def test_a_validator_can_wrap_any_struct_directly():
    class Event(msgspec.Struct):
        action: str

    validator = Validator(Event)
    assert validator.validate(b'{"action": "opened"}') is None
    assert invalid(validator, b"{}") == '$: object missing required field "action"'


@pytest.mark.parametrize(
    "body, ok",
    [
        (b'{"n": 1e400}', True),
        (b'{"n": -1.5E+400}', True),
        (b'{"n": 1e-400}', True),  # rounds to 0.0: in range
        (b'{"n": 1e400, "s": "1e400 \\" 2e999"}', True),
        (b'{"n": "1e400"}', False),  # a string stays a string
        (b'{"i": 1e400}', False),  # a float token is never an integer
        (b'{"top": 1e400}', False),
        (b'{"top": -1e400}', True),
    ],
)
def test_numbers_beyond_a_doubles_range_are_numbers_above_any_finite_bound(tmp_path, body, ok):
    validator = load_schema(write(tmp_path, {"type": "object", "properties": {
        "n": {"type": "number"}, "i": {"type": "integer"}, "s": {"type": "string"},
        "top": {"type": "number", "maximum": 1e308}}}))
    if ok:
        assert validator.validate(body) is None
    else:
        assert invalid(validator, body).startswith("$.")
