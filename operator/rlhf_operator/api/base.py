"""The base model of the API and its validation rules.

Every cross-field rule is written once, as a `CelRule`: the CEL expression goes into the CRD (the
API server refuses invalid objects) and its Python twin runs as a pydantic validator (the operator
and the stage programs refuse the same objects with the same message).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, GetJsonSchemaHandler, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

IMMUTABLE_MESSAGE = "`{field}` must not change: it is immutable after creation; create a new RLHFJob instead"


@dataclass(frozen=True)
class CelRule:
    """A CEL rule for the CRD and its Python twin (`check` gets the model, True means valid)."""

    cel: str
    message: str
    check: Callable[[Any], bool]


def renamed(old: str, new: str, absent: Callable[[Any], bool]) -> CelRule:
    """Refuses a field that was renamed, naming the new one (at `kubectl apply` and in Python).

    The old name stays in the schema only for this rule: without it the API server would prune the
    field silently or call it unknown, and a user could not tell what to write instead."""
    return CelRule(f"!has(self.{old})", f"`{old}` was renamed: it must be written `{new}`", absent)


class ApiModel(BaseModel):
    """camelCase on the wire, unknown fields refused (the API server prunes or refuses them too)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
        validate_assignment=False,
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @model_validator(mode="after")
    def _check_cel_rules(self) -> Self:
        for rule in type(self).cel_rules:
            if not rule.check(self):
                raise ValueError(rule.message)
        return self

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        if cls.cel_rules:
            target = handler.resolve_ref_schema(schema)
            target["x-kubernetes-validations"] = [
                {"rule": r.cel, "message": r.message} for r in cls.cel_rules
            ]
        return schema


def immutable(field: str) -> dict[str, Any]:
    """`json_schema_extra` of a field that may not change once the object exists."""
    return {
        "x-kubernetes-validations": [
            {"rule": "self == oldSelf", "message": IMMUTABLE_MESSAGE.format(field=field)}
        ]
    }
