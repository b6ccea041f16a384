import json

import pytest

from llm_assets.ingestion import IngestError, SourceDescriptor, parse_descriptor

WHERE = "landing/foo/source.yaml"
VALID = {
    "name": "foo",
    "licence": "CC-BY-4.0",
    "jurisdiction": "GR",
    "source_uri": "https://example.org/foo",
}


def _yaml(fields: dict[str, str]) -> bytes:
    return "".join(f"{key}: {value}\n" for key, value in fields.items()).encode()


def _error(data: bytes) -> str:
    with pytest.raises(IngestError) as caught:
        parse_descriptor(data, WHERE)
    message = str(caught.value)
    assert message.startswith(f"{WHERE}: ")
    assert "\n" not in message
    return message


def test_parses_yaml_with_defaults():
    descriptor = parse_descriptor(_yaml({**VALID, "language": "el"}), WHERE)
    assert descriptor == SourceDescriptor(**VALID, language="el")
    assert descriptor.text_field == "text"
    assert descriptor.id_field is None


def test_parses_json():
    assert parse_descriptor(json.dumps(VALID).encode(), WHERE).name == "foo"


@pytest.mark.parametrize("field", ["name", "licence", "jurisdiction", "source_uri"])
def test_required_field_missing_names_field_and_fix(field):
    fields = {key: value for key, value in VALID.items() if key != field}
    message = _error(_yaml(fields))
    assert f"field '{field}' is required — " in message


def test_missing_licence_message():
    fields = {key: value for key, value in VALID.items() if key != "licence"}
    assert _error(_yaml(fields)) == (
        f"{WHERE}: field 'licence' is required — add the source's licence, e.g. CC-BY-4.0 or public-domain"
    )


def test_blank_licence_is_refused():
    assert "field 'licence' is empty — add the source's licence" in _error(_yaml({**VALID, "licence": "'  '"}))


@pytest.mark.parametrize("name", ["Foo", "-foo", "foo bar", "a" * 65, "föö", "''"])
def test_name_must_be_a_slug(name):
    assert "field 'name'" in _error(_yaml({**VALID, "name": name}))


def test_unknown_field_lists_allowed_fields():
    message = _error(_yaml({**VALID, "licnce": "MIT"}))
    assert "unknown field 'licnce' — remove it or use one of: name, title, licence" in message


def test_unquoted_yaml_boolean_language_says_to_quote():
    # YAML 1.1 reads `no` (Norwegian) as false.
    message = _error(_yaml({**VALID, "language": "no"}))
    assert "field 'language' must be text, got bool" in message
    assert "quote it in YAML" in message


def test_language_must_be_an_iso_code():
    assert "field 'language'" in _error(_yaml({**VALID, "language": "Greek"}))


def test_several_problems_are_reported_on_one_line():
    message = _error(_yaml({"name": "foo", "source_uri": "x"}))
    assert "'licence' is required" in message
    assert "'jurisdiction' is required" in message


def test_syntax_error():
    assert "not valid YAML or JSON" in _error(b"name: foo\n  licence: [unclosed\n")


@pytest.mark.parametrize("data", [b"- a\n- b\n", b"just text", b""])
def test_not_a_mapping(data):
    assert "expected a mapping of fields" in _error(data)


def test_bad_utf8():
    assert "not valid UTF-8 at byte 6" in _error(b"name: \xff\n")
