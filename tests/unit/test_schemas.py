"""Exported JSON Schemas match the models, and every example message validates against them."""

import json
from pathlib import Path

import jsonschema
import pytest
from deskstream.events import InboundMessage
from deskstream.schemas import ADAPTERS, schema_for
from deskstream.topics import TOPICS
from pydantic import ValidationError

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
EXAMPLES = sorted((SCHEMAS / "examples").glob("*/*.json"))


def test_every_model_named_in_the_registry_has_an_exported_schema() -> None:
    named = {t.value_name for t in TOPICS if "(" not in t.value_name}
    assert named <= set(ADAPTERS)
    for name in ADAPTERS:
        exported = json.loads((SCHEMAS / f"{name}.v1.json").read_text())
        assert exported == schema_for(name), f"schemas/{name}.v1.json is stale: run make schemas"
        assert [p for p in EXAMPLES if p.parent.name == name], f"no example for {name}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_example_validates_against_its_schema_and_model(path: Path) -> None:
    schema = json.loads((SCHEMAS / f"{path.parent.name}.v1.json").read_text())
    example = json.loads(path.read_text())
    jsonschema.validate(example, schema, format_checker=jsonschema.FormatChecker())
    ADAPTERS[path.parent.name].validate_python(example)


def test_invalid_message_is_rejected_naming_the_field() -> None:
    example = json.loads((SCHEMAS / "examples" / "InboundMessage" / "email.json").read_text())
    example["channel"] = "fax"
    schema = json.loads((SCHEMAS / "InboundMessage.v1.json").read_text())
    with pytest.raises(jsonschema.ValidationError) as by_schema:
        jsonschema.validate(example, schema)
    assert list(by_schema.value.absolute_path) == ["channel"]
    with pytest.raises(ValidationError) as by_model:
        InboundMessage.model_validate(example)
    assert by_model.value.errors()[0]["loc"] == ("channel",)


def test_unknown_field_is_an_error_not_data() -> None:
    example = json.loads((SCHEMAS / "examples" / "InboundMessage" / "email.json").read_text())
    example["recieved_at"] = example["received_at"]
    with pytest.raises(ValidationError, match="recieved_at"):
        InboundMessage.model_validate(example)
