"""CDS Hooks 2.0 wire shapes: what a client sends us and what we send back.

One definition of each shape, used three ways: to validate requests (with a precise message
for the first problems found), to guarantee our responses conform (the response models
reject null or empty optional fields, a summary of 140 characters or more, suggestions
without ``selectionBehavior``, override reasons without ``display``), and to publish the
OpenAPI schema. Requests allow unknown fields (``extension`` and later additions); responses
forbid them so that a typo cannot reach an EHR.

Sources: CDS Hooks 2.0.1 "Calling a CDS Service", "CDS Service Response", "Feedback";
the hook pages of patient-view and order-select; ``docs/cds-hooks.md`` sections 0-5.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic.json_schema import SkipJsonSchema, models_json_schema

from fhir_leuko.errors import InputError

JSON = dict[str, Any]
M = TypeVar("M", bound="BaseModel")

#: A REQUIRED string "MAY NOT have empty values (no characters or only whitespace)" (spec,
#: "Use of JSON"); also what we emit for every string.
NonBlank = Annotated[StrictStr, StringConstraints(min_length=1, max_length=4096, pattern=r"\S")]
#: FHIR ``id`` (R4 datatype): it goes into our own fetch URLs, so anything else is refused.
FhirId = Annotated[StrictStr, StringConstraints(pattern=r"^[A-Za-z0-9\-.]{1,64}$")]
#: Absolute http(s) URL; whether we may call it is the allowlist's decision (fetch.py).
HttpUrl = Annotated[
    StrictStr, StringConstraints(max_length=2048, pattern=r"^https?://[^\s/?#]+[^\s]*$")
]

_FHIR_ID = r"[A-Za-z0-9\-.]{1,64}"
#: patient-view: "Practitioner, PractitionerRole, Patient, or RelatedPerson" (hook page).
PatientViewUser = Annotated[
    StrictStr,
    StringConstraints(
        pattern=rf"^(Practitioner|PractitionerRole|Patient|RelatedPerson)/{_FHIR_ID}$"
    ),
]
#: order-select: "Practitioner or PractitionerRole" (hook page).
OrderSelectUser = Annotated[
    StrictStr, StringConstraints(pattern=rf"^(Practitioner|PractitionerRole)/{_FHIR_ID}$")
]
#: ``selections`` entries: ``Type/id`` of an entry of ``draftOrders``.
TypedReference = Annotated[
    StrictStr, StringConstraints(pattern=rf"^[A-Z][A-Za-z]{{1,63}}/{_FHIR_ID}$")
]


class _Request(BaseModel):
    """Client input: strict JSON types, unknown fields (``extension``) kept and ignored.

    A declared field sent as ``null`` is refused: "JSON attributes SHALL NOT be null" and an
    OPTIONAL field without a value is omitted (spec "Use of JSON"). Prefetch values are not
    fields, so their spec-sanctioned ``null`` passes.
    """

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, info in cls.model_fields.items():
                if name in data and data[name] is None:
                    how = "must not be null" if info.is_required() else "must be omitted, not null"
                    raise ValueError(f"{name} {how}")
        return data


class _Response(BaseModel):
    """Our output: unknown fields forbidden; ``None`` means "omit", never sent as null."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --- Request -----------------------------------------------------------------------------------


class FhirAuthorization(_Request):
    """Access token the client grants us for ``fhirServer`` (spec "Passing the Access Token")."""

    access_token: NonBlank
    token_type: Literal["Bearer", "bearer"]
    expires_in: Annotated[StrictInt, Field(ge=0)]
    scope: NonBlank
    subject: NonBlank
    patient: FhirId | SkipJsonSchema[None] = None


class HookRequest(_Request):
    """The body of ``POST /cds-services/{id}``; ``context`` is checked per hook afterwards."""

    # The schema extras only document (OpenAPI, schemathesis) what the router checks per hook.
    hook: Annotated[NonBlank, Field(json_schema_extra={"enum": ["patient-view", "order-select"]})]
    hookInstance: NonBlank
    fhirServer: HttpUrl | SkipJsonSchema[None] = None
    fhirAuthorization: FhirAuthorization | SkipJsonSchema[None] = None
    context: Annotated[
        dict[str, Any],
        Field(
            json_schema_extra={
                "anyOf": [
                    {"$ref": "#/components/schemas/PatientViewContext"},
                    {"$ref": "#/components/schemas/OrderSelectContext"},
                ]
            }
        ),
    ]
    prefetch: dict[str, Any] | SkipJsonSchema[None] = None

    @model_validator(mode="after")
    def _server_for_token(self) -> HookRequest:
        # Spec: fhirServer is "CONDITIONAL: REQUIRED if fhirAuthorization is sent".
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("fhirServer is required when fhirAuthorization is sent")
        return self

    @property
    def bearer_token(self) -> str | None:
        return self.fhirAuthorization.access_token if self.fhirAuthorization else None


class PatientViewContext(_Request):
    """patient-view 1.0 context."""

    userId: PatientViewUser
    patientId: FhirId
    encounterId: FhirId | SkipJsonSchema[None] = None


class DraftOrders(_Request):
    """``draftOrders``: a Bundle; ``type`` is not required (the spec's example omits it)."""

    resourceType: Literal["Bundle"]
    entry: Annotated[list[dict[str, Any]], Field(min_length=1)]


class OrderSelectContext(_Request):
    """order-select 1.0 context."""

    userId: OrderSelectUser
    patientId: FhirId
    encounterId: FhirId | SkipJsonSchema[None] = None
    selections: Annotated[list[TypedReference], Field(min_length=1)]
    draftOrders: DraftOrders

    @model_validator(mode="after")
    def _selections_in_draft(self) -> OrderSelectContext:
        present = {
            f"{r.get('resourceType')}/{r.get('id')}"
            for e in self.draftOrders.entry
            if isinstance(r := e.get("resource"), dict)
        }
        missing = [s for s in self.selections if s not in present]
        if missing:
            raise ValueError(
                f"selections name entries not in draftOrders: {', '.join(missing[:3])}"
            )
        return self


# --- Response ------------------------------------------------------------------------------------


class Coding(_Response):
    """CDS Hooks' own Coding: ``code`` and ``system`` required, ``display`` conditional."""

    code: NonBlank
    system: NonBlank
    display: NonBlank | None = None


class Source(_Response):
    label: NonBlank
    url: HttpUrl | None = None
    icon: HttpUrl | None = None
    topic: Coding | None = None


class Action(_Response):
    type: Literal["create", "update", "delete"]
    description: NonBlank
    resource: dict[str, Any] | None = None
    resourceId: NonBlank | None = None

    @model_validator(mode="after")
    def _payload(self) -> Action:
        if self.type in ("create", "update") and not self.resource:
            raise ValueError(f"a {self.type} action carries the resource")
        if self.type == "delete" and not self.resourceId:
            raise ValueError("a delete action names resourceId")
        return self


class Suggestion(_Response):
    label: NonBlank
    uuid: NonBlank | None = None
    isRecommended: StrictBool | None = None
    actions: Annotated[list[Action], Field(min_length=1)] | None = None


class Link(_Response):
    label: NonBlank
    url: HttpUrl
    type: Literal["absolute", "smart"]
    appContext: NonBlank | None = None
    autolaunchable: StrictBool | None = None


class Card(_Response):
    uuid: NonBlank | None = None
    summary: Annotated[NonBlank, StringConstraints(max_length=139)]  # "< 140 characters"
    detail: NonBlank | None = None
    indicator: Literal["info", "warning", "critical"]
    source: Source
    suggestions: Annotated[list[Suggestion], Field(min_length=1)] | None = None
    selectionBehavior: Literal["at-most-one", "any"] | None = None
    overrideReasons: Annotated[list[Coding], Field(min_length=1)] | None = None
    links: Annotated[list[Link], Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _conformance(self) -> Card:
        if self.suggestions is not None and self.selectionBehavior is None:
            raise ValueError("selectionBehavior must be present when there are suggestions")
        if self.suggestions is None and self.selectionBehavior is not None:
            raise ValueError("selectionBehavior without suggestions")
        if self.suggestions is not None:
            recommended = sum(1 for s in self.suggestions if s.isRecommended)
            if recommended > 1 and self.selectionBehavior != "any":
                raise ValueError("several recommended suggestions need selectionBehavior any")
        if self.overrideReasons is not None and any(
            r.display is None for r in self.overrideReasons
        ):
            raise ValueError("every override reason carries a display")
        return self


class CdsResponse(_Response):
    """``{"cards": [...]}``; ``cards`` may be empty (the spec's "no advice")."""

    cards: list[Card]
    systemActions: Annotated[list[Action], Field(min_length=1)] | None = None


class ServiceEntry(_Response):
    hook: NonBlank
    title: NonBlank | None = None
    description: NonBlank
    id: Annotated[NonBlank, StringConstraints(pattern=r"^[A-Za-z0-9\-_.]+$")]
    prefetch: dict[str, NonBlank] | None = None
    usageRequirements: NonBlank | None = None


class Discovery(_Response):
    services: list[ServiceEntry]


class FeedbackRequest(_Request):
    """Documented for the OpenAPI schema; validation is ``cdshooks.feedback.parse_feedback``."""

    feedback: Annotated[list[dict[str, Any]], Field(min_length=1)]


class OperationOutcomeIssue(_Response):
    severity: Literal["fatal", "error", "warning", "information"]
    code: NonBlank
    diagnostics: NonBlank | None = None


class OperationOutcome(_Response):
    """Every non-2xx body (CDS Hooks 3.0 makes this a SHOULD; 2.0 allows any body)."""

    resourceType: Literal["OperationOutcome"]
    issue: Annotated[list[OperationOutcomeIssue], Field(min_length=1)]


# --- Helpers -------------------------------------------------------------------------------------


def wire(model: BaseModel) -> JSON:
    """The JSON object to send: ``None`` fields omitted, never null."""
    return model.model_dump(mode="json", exclude_none=True)


def wire_bytes(model: BaseModel) -> bytes:
    """:func:`wire`, serialised: the same JSON, written by pydantic's serialiser in one step."""
    return model.__pydantic_serializer__.to_json(model, exclude_none=True)


_BRANCH_TAG = re.compile(r"^[A-Z]|[-\[]")


def validation_message(err: ValidationError, *, prefix: str = "", limit: int = 3) -> str:
    """One sentence naming the first problems of a request, e.g. ``context.patientId is missing``.

    Input values are never echoed: they may hold PHI, and the message can reach a log.
    """
    parts: list[str] = []
    # An optional field is a union with None: its None branch always fails too, and the
    # other branch shows up in ``loc`` under a tag ("constrained-str", a model name).
    errors = [
        e
        for e in err.errors(include_url=False, include_input=False)
        if e["type"] != "none_required"
    ]
    for e in errors[:limit]:
        loc = [p for p in e["loc"] if isinstance(p, int) or not _BRANCH_TAG.search(p)]
        where = ".".join(str(p) for p in (prefix, *loc) if p != "")
        kind = e["type"]
        if kind == "missing":
            parts.append(f"{where} is missing")
        elif kind == "value_error":
            text = str(e["msg"]).removeprefix("Value error, ")
            parts.append(f"{where}: {text}" if where else text)
        elif kind == "string_pattern_mismatch":
            parts.append(f"{where} has the wrong format")
        elif kind == "extra_forbidden":
            parts.append(f"{where} is not allowed")
        else:
            parts.append(f"{where}: {e['msg']}" if where else str(e["msg"]))
    more = len(errors) - len(parts)
    if more > 0:
        parts.append(f"and {more} more problem{'s' if more > 1 else ''}")
    return "; ".join(parts)


def parse_model(model: type[M], data: Any, *, prefix: str = "") -> M:
    """Validate decoded JSON into ``model``, raising :class:`InputError` with a precise message."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise InputError(validation_message(err, prefix=prefix)) from None


def openapi_schemas(models: Sequence[type[BaseModel]]) -> dict[str, JSON]:
    """JSON Schemas of ``models`` for ``components/schemas`` of the OpenAPI document."""
    _, top = models_json_schema(
        [(m, "validation") for m in models], ref_template="#/components/schemas/{model}"
    )
    defs: dict[str, JSON] = top.get("$defs", {})
    return defs
