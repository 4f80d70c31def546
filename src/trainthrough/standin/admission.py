"""Admission of custom resources, as kube-apiserver admits them, for the stand-in's API.

No kube-apiserver runs on the project's machines (DESIGN.md), so the emulator
(emulator.py) does what the API server's custom-resource handler does with a create or
an update of an object whose CRD has a structural ``openAPIV3Schema``, in its order:

1. unknown fields: with ``fieldValidation=Strict`` (kubectl's default ``--validate=strict``)
   the request is refused (400, ``strict decoding error: unknown field "spec.x"``); with
   ``Warn`` (the server's default) or ``Ignore`` they are pruned, ``Warn`` saying so in a
   ``Warning`` header (a whole number written as 2.0 is kept as 2, as the API server's
   JSON has it). ``metadata`` is ObjectMeta's, not the schema's (only its ``name``
   is checked against the schema), and ``x-kubernetes-preserve-unknown-fields`` keeps all;
2. defaulting: a null where the schema is not ``nullable`` is dropped, then a missing
   field with a ``default`` gets it, recursively (structural defaulting);
3. the schema's value validations (type, enum, bounds, lengths, pattern, items,
   required, int-or-string, nullable), each problem a cause with its field path;
4. the CEL ``x-kubernetes-validations`` of every node that has a value, when step 3 found
   no type or enum error (as the API server, which skips them then and says so):
   ``self`` is the node's value typed by the schema (``number`` is a double even when
   written as 1), transition rules (those naming ``oldSelf``) run on an update where the
   old object has the node too, and a failed rule's cause is its ``messageExpression``
   (else ``message``) at the node plus its ``fieldPath``, with its ``reason``.

On an update, a node whose value did not change is not validated again (the API server's
validation ratcheting), so a status write does not re-run the rules of an unchanged spec.
Problems are answered as the API server answers them: 422 Invalid, a ``metav1.Status``
whose ``details.causes`` name each field (``AdmissionError.status``).

CEL is cel-python's (PyPI ``cel-python``, module ``celpy``: the standard definitions and
RE2 regexps) with the functions of Kubernetes' ``strings`` extension that CRD rules may use
(``KUBERNETES_FUNCTIONS``); a rule calling a function it lacks is a rule error, as a rule
the API server cannot compile would have kept the CRD out.

Not emulated: duplicate fields in the request body, ``x-kubernetes-list-type`` checks,
embedded resources, CEL cost limits (tests/test_cel_rules.py checks the CRD's bounds),
``optionalOldSelf``.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import celpy
import celpy.celtypes as cel
import re2

__all__ = [
    "KUBERNETES_FUNCTIONS",
    "Admission",
    "AdmissionError",
    "Cause",
    "FieldValidation",
    "cel_value",
    "evaluate",
]

_MISSING = object()
_RULES = "x-kubernetes-validations"
_PRESERVE = "x-kubernetes-preserve-unknown-fields"
_INT_OR_STRING = "x-kubernetes-int-or-string"


class FieldValidation:
    """The values of the ``fieldValidation`` query parameter."""

    STRICT = "Strict"
    WARN = "Warn"
    IGNORE = "Ignore"
    ALL = (STRICT, WARN, IGNORE)


# --------------------------------------------------------------------------- CEL


def _substring(text: cel.StringType, start: cel.IntType, end: cel.IntType | None = None) -> cel.StringType:
    stop = len(text) if end is None else int(end)
    if not 0 <= int(start) <= stop <= len(text):
        raise ValueError(f"substring: index out of range: {int(start)}, {stop} of {len(text)}")
    return cel.StringType(str(text)[int(start) : stop])


def _index_of(text: cel.StringType, sub: cel.StringType, start: cel.IntType | None = None) -> cel.IntType:
    return cel.IntType(str(text).find(str(sub), 0 if start is None else int(start)))


def _join(items: cel.ListType, separator: cel.StringType | None = None) -> cel.StringType:
    return cel.StringType(("" if separator is None else str(separator)).join(str(i) for i in items))


def _split(text: cel.StringType, separator: cel.StringType) -> cel.ListType:
    return cel.ListType([cel.StringType(part) for part in str(text).split(str(separator))])


# Kubernetes' `strings` extension (cel-go ext.Strings), as far as these rules may need it.
KUBERNETES_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "substring": _substring,
    "indexOf": _index_of,
    "lastIndexOf": lambda text, sub: cel.IntType(str(text).rfind(str(sub))),
    "lowerAscii": lambda text: cel.StringType(str(text).lower()),
    "upperAscii": lambda text: cel.StringType(str(text).upper()),
    "trim": lambda text: cel.StringType(str(text).strip()),
    "join": _join,
    "split": _split,
}

_ENVIRONMENT = celpy.Environment()


@functools.cache
def _program(expression: str) -> celpy.Runner:
    return _ENVIRONMENT.program(_ENVIRONMENT.compile(expression), functions=KUBERNETES_FUNCTIONS)


def evaluate(expression: str, activation: Mapping[str, Any]) -> Any:
    """One CEL expression on typed values (``cel_value``); raises on an error."""
    result = _program(expression).evaluate(dict(activation))
    if isinstance(result, celpy.CELEvalError):
        raise result
    return result


def cel_value(value: Any, schema: Mapping[str, Any]) -> Any:
    """A JSON value as the API server gives it to CEL: typed by its schema."""
    if value is None:
        return None
    if schema.get(_INT_OR_STRING):
        return cel.IntType(value) if isinstance(value, int) else cel.StringType(value)
    kind = schema.get("type")
    if kind == "object":
        if "properties" in schema:
            props = schema["properties"]
            return cel.MapType(
                {cel.StringType(k): cel_value(v, props[k]) for k, v in value.items() if k in props}
            )
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            return cel.MapType({cel.StringType(k): cel_value(v, extra) for k, v in value.items()})
        return celpy.json_to_cel(value)
    if kind == "array":
        return cel.ListType([cel_value(item, schema.get("items", {})) for item in value])
    if kind == "number":
        return cel.DoubleType(float(value))
    if kind == "integer":
        return cel.IntType(value)
    if kind == "boolean":
        return cel.BoolType(value)
    if kind == "string":
        return cel.StringType(value)
    return celpy.json_to_cel(value)


def _transition(expression: str) -> bool:
    return "oldSelf" in expression


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class Cause:
    """One problem: a metav1.StatusCause (``reason``, ``field``, ``message``)."""

    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueNotSupported, ...
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class AdmissionError(Exception):
    """A refused request: ``status`` is the API server's answer (a metav1.Status)."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any]) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    @property
    def status(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Status",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def _show(value: Any) -> str:
    """A value as the API server's field errors quote it (Go's %q for strings)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(_type_name(value))


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _invalid(path: str, value: Any, detail: str) -> Cause:
    return Cause("FieldValueInvalid", path, f"Invalid value: {_show(value)}: {detail}")


def _join_path(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


# --------------------------------------------------------------------------- the admission


@dataclass
class _Walk:
    """The state of one admission: what was found while walking the object."""

    unknown: list[str] = field(default_factory=list)
    causes: list[Cause] = field(default_factory=list)
    blocking: bool = False  # a type or enum error: the CEL rules are not run


class Admission:
    """The admission of one custom resource version: ``Admission(crd, version)``."""

    def __init__(self, crd: Mapping[str, Any], version: str) -> None:
        spec = crd["spec"]
        (served,) = [v for v in spec["versions"] if v["name"] == version]
        self.schema: dict[str, Any] = copy.deepcopy(served["schema"]["openAPIV3Schema"])
        self.group, self.kind = spec["group"], spec["names"]["kind"]
        self.plural = spec["names"]["plural"]

    # -- the API server's steps --------------------------------------------------------

    def admit(
        self,
        body: dict[str, Any],
        old: Mapping[str, Any] | None = None,
        *,
        field_validation: str = FieldValidation.WARN,
    ) -> tuple[dict[str, Any], list[str]]:
        """The object to store (pruned and defaulted) and the warnings to send, or
        AdmissionError. ``old``: the stored object, for an update."""
        if field_validation not in FieldValidation.ALL:
            raise AdmissionError(
                400, "BadRequest", f"invalid fieldValidation {field_validation!r}: must be one of "
                f"{', '.join(FieldValidation.ALL)}", {},
            )  # fmt: skip
        name = (body.get("metadata") or {}).get("name") or (old or {}).get("metadata", {}).get("name", "")
        walk = _Walk()
        obj = self._prune(copy.deepcopy(body), self.schema, "", walk, root=True)
        if walk.unknown and field_validation == FieldValidation.STRICT:
            listed = ", ".join(f'unknown field "{path}"' for path in walk.unknown)
            raise AdmissionError(
                400, "BadRequest",
                f'{self.kind} in version "{self._version(body)}" cannot be handled as a {self.kind}: '
                f"strict decoding error: {listed}", {},
            )  # fmt: skip
        warnings = [f'unknown field "{path}"' for path in walk.unknown] if field_validation == FieldValidation.WARN else []
        obj = _go_numbers(self._default(obj, self.schema))
        self._validate(obj, self.schema, "", walk, _MISSING if old is None else old, root=True)
        if not walk.blocking:
            self._rules(obj, self.schema, "", walk, _MISSING if old is None else old)
        elif any(_RULES in node for node in _nodes(self.schema)):
            walk.causes.append(
                Cause(
                    "InternalError", "<nil>",
                    "some validation rules were not checked because the object was invalid; "
                    "correct the existing errors to complete validation",
                )
            )  # fmt: skip
        if walk.causes:
            raise self._invalid(name, walk.causes)
        return obj, warnings

    def _version(self, body: Mapping[str, Any]) -> str:
        return str(body.get("apiVersion", "")).rpartition("/")[2]

    def _invalid(self, name: str, causes: list[Cause]) -> AdmissionError:
        listed = str(causes[0]) if len(causes) == 1 else "[" + ", ".join(map(str, causes)) + "]"
        return AdmissionError(
            422,
            "Invalid",
            f'{self.kind}.{self.group} "{name}" is invalid: {listed}',
            {
                "name": name,
                "group": self.group,
                "kind": self.kind,
                "causes": [{"reason": c.reason, "message": c.message, "field": c.field} for c in causes],
            },
        )

    def _prune(self, value: Any, schema: Mapping[str, Any], path: str, walk: _Walk, root: bool = False) -> Any:
        """Drops (and lists) the fields the schema does not declare."""
        if isinstance(value, dict) and schema.get("type") == "object" and not schema.get(_PRESERVE):
            props = schema.get("properties")
            extra = schema.get("additionalProperties")
            for key in list(value):
                if root and key in ("apiVersion", "kind", "metadata"):
                    continue  # TypeMeta and ObjectMeta: not the schema's
                if props is not None and key in props:
                    value[key] = self._prune(value[key], props[key], _join_path(path, key), walk)
                elif isinstance(extra, Mapping):
                    value[key] = self._prune(value[key], extra, _join_path(path, key), walk)
                elif props is not None or extra is not True:
                    walk.unknown.append(_join_path(path, key))
                    del value[key]
        elif isinstance(value, list) and schema.get("type") == "array" and isinstance(schema.get("items"), Mapping):
            for i, item in enumerate(value):
                value[i] = self._prune(item, schema["items"], f"{path}[{i}]", walk)
        return value

    def _default(self, value: Any, schema: Mapping[str, Any]) -> Any:
        if isinstance(value, dict) and "properties" in schema:
            for key, sub in schema["properties"].items():
                if key in value and value[key] is None and not sub.get("nullable"):
                    del value[key]  # a null where none is allowed is pruned, then defaulted
                if key not in value and "default" in sub:
                    value[key] = copy.deepcopy(sub["default"])
                if key in value:
                    value[key] = self._default(value[key], sub)
        elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
            for i, item in enumerate(value):
                value[i] = self._default(item, schema["items"])
        return value

    def _validate(
        self, value: Any, schema: Mapping[str, Any], path: str, walk: _Walk, old: Any, root: bool = False
    ) -> None:
        if old is not _MISSING and value == old:
            return  # ratcheting: an unchanged value is not validated again
        if value is None:
            if not schema.get("nullable"):
                walk.causes.append(_invalid(path, value, f"{path} in body must be of type {self._type(schema)}: \"null\""))
                walk.blocking = True
            return
        if not self._typed(value, schema):
            got = _type_name(value)
            walk.causes.append(
                Cause("FieldValueTypeInvalid", path, f'Invalid value: "{got}": {path} in body must be of type {self._type(schema)}: "{got}"')
            )
            walk.blocking = True
            return
        if "enum" in schema and value not in schema["enum"]:
            supported = ", ".join(_show(e) for e in schema["enum"])
            walk.causes.append(Cause("FieldValueNotSupported", path, f"Unsupported value: {_show(value)}: supported values: {supported}"))
            walk.blocking = True
        self._bounds(value, schema, path, walk)
        if isinstance(value, dict):
            for key in schema.get("required", []):
                if key not in value:
                    walk.causes.append(Cause("FieldValueRequired", _join_path(path, key), "Required value"))
        for child, sub, child_path, child_old in _children(value, schema, path, old, skip_metadata=root):
            self._validate(child, sub, child_path, walk, child_old)
        metadata_schema = (schema.get("properties") or {}).get("metadata")
        if root and isinstance(value, dict) and isinstance(value.get("metadata"), dict) and metadata_schema is not None:
            # Of the metadata only the name is the CRD's to check (the root has no
            # additionalProperties, so this comes after its fields, as it always did).
            name_schema = metadata_schema.get("properties", {}).get("name")
            if name_schema is not None and "name" in value["metadata"]:
                self._validate(value["metadata"]["name"], name_schema, "metadata.name", walk, _MISSING)

    @staticmethod
    def _type(schema: Mapping[str, Any]) -> str:
        return "integer or string" if schema.get(_INT_OR_STRING) else str(schema.get("type", "any"))

    @staticmethod
    def _typed(value: Any, schema: Mapping[str, Any]) -> bool:
        if schema.get(_INT_OR_STRING):
            return isinstance(value, str) or _integer(value)
        kind = schema.get("type")
        if kind is None:
            return True
        return {
            "object": lambda: isinstance(value, dict),
            "array": lambda: isinstance(value, list),
            "string": lambda: isinstance(value, str),
            "boolean": lambda: isinstance(value, bool),
            "integer": lambda: _integer(value),
            "number": lambda: not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value),
        }.get(kind, lambda: True)()

    def _bounds(self, value: Any, schema: Mapping[str, Any], path: str, walk: _Walk) -> None:
        def bad(detail: str) -> None:
            walk.causes.append(_invalid(path, value, f"{path} in body {detail}"))

        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in schema:
                low, exclusive = schema["minimum"], schema.get("exclusiveMinimum", False)
                if value < low or (exclusive and value == low):
                    bad(f"should be greater than {'' if exclusive else 'or equal to '}{_show(low)}")
            if "maximum" in schema:
                high, exclusive = schema["maximum"], schema.get("exclusiveMaximum", False)
                if value > high or (exclusive and value == high):
                    bad(f"should be less than {'' if exclusive else 'or equal to '}{_show(high)}")
        if isinstance(value, str):
            if "maxLength" in schema and len(value) > schema["maxLength"]:
                walk.causes.append(Cause("FieldValueTooLong", path, f"Too long: may not be more than {schema['maxLength']} bytes"))
            if "minLength" in schema and len(value) < schema["minLength"]:
                bad(f"should be at least {schema['minLength']} chars long")
            if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
                bad(f"should match '{schema['pattern']}'")
        if isinstance(value, list):
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                walk.causes.append(Cause("FieldValueTooMany", path, f"Too many: {len(value)}: must have at most {schema['maxItems']} items"))
            if "minItems" in schema and len(value) < schema["minItems"]:
                bad(f"should have at least {schema['minItems']} items")

    def _rules(self, value: Any, schema: Mapping[str, Any], path: str, walk: _Walk, old: Any) -> None:
        if value is None or (old is not _MISSING and value == old):
            return  # null: nothing to check; unchanged: ratcheting
        for rule in schema.get(_RULES, []):
            transition = _transition(rule["rule"])
            if transition and old is _MISSING:
                continue  # a transition rule runs on an update only
            where = path + rule.get("fieldPath", "") if rule.get("fieldPath") else path
            try:
                activation = {"self": cel_value(value, schema)}
                if transition:
                    activation["oldSelf"] = cel_value(old, schema)
                passed = bool(evaluate(rule["rule"], activation))
            except Exception as error:  # noqa: BLE001 - a rule that fails to evaluate is a problem in the rule
                walk.causes.append(_invalid(where, _placeholder(schema), f"rule evaluation error: {rule['rule']}: {error}"))
                continue
            if passed:
                continue
            message = self._message(rule, activation)
            reason = rule.get("reason", "FieldValueInvalid")
            if reason == "FieldValueRequired":
                text = f"Required value: {message}"
            elif reason == "FieldValueForbidden":
                text = f"Forbidden: {message}"
            elif reason == "FieldValueDuplicate":
                text = f"Duplicate value: {message}"
            else:
                text = f"Invalid value: {json.dumps(self._type(schema))}: {message}"
            walk.causes.append(Cause(reason, where, text))
        for child, sub, child_path, child_old in _children(value, schema, path, old, skip_metadata=path == ""):
            self._rules(child, sub, child_path, walk, child_old)

    @staticmethod
    def _message(rule: Mapping[str, Any], activation: Mapping[str, Any]) -> str:
        if "messageExpression" in rule:
            try:
                text = str(evaluate(rule["messageExpression"], activation))
            except Exception:  # noqa: BLE001 - the API server falls back to message then
                text = ""
            if text.strip() and "\n" not in text:
                return text
        return str(rule.get("message") or f"failed rule: {rule['rule']}")


def _children(
    value: Any, schema: Mapping[str, Any], path: str, old: Any, *, skip_metadata: bool
) -> Iterator[tuple[Any, Mapping[str, Any], str, Any]]:
    """Each value under `value` with its schema, path and old value (_MISSING where none):
    the one walk of the validation and of the rules. `skip_metadata`: the object's root,
    whose metadata the API server checks itself."""
    if isinstance(value, dict):
        old_map = old if isinstance(old, dict) else {}
        for key, sub in (schema.get("properties") or {}).items():
            if key in value and not (skip_metadata and key == "metadata"):
                yield value[key], sub, _join_path(path, key), old_map.get(key, _MISSING)
        extra = schema.get("additionalProperties")
        if isinstance(extra, Mapping):
            for key, item in value.items():
                yield item, extra, _join_path(path, key), old_map.get(key, _MISSING)
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            yield item, schema["items"], f"{path}[{i}]", _MISSING  # atomic lists: no old item


_JSON_INTEGER = 2**53  # a float64 beyond it is no JSON integer (go-openapi's IsFloat64AJSONInteger)
_INT64 = 2**63


def _whole(value: float) -> bool:
    return math.isfinite(value) and value.is_integer() and abs(value) <= _JSON_INTEGER


def _go_numbers(value: Any) -> Any:
    """Numbers as the API server keeps them: it decodes JSON into float64 and int64 and
    writes a whole float64 back without a fraction (2.0 is stored and served as 2)."""
    if isinstance(value, float) and _whole(value):
        return int(value)
    if isinstance(value, dict):
        return {k: _go_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_go_numbers(v) for v in value]
    return value


def _integer(value: Any) -> bool:
    """An int64, as the API server decodes an integer (a larger one is a float64)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return -_INT64 <= value < _INT64
    return isinstance(value, float) and _whole(value)


def _placeholder(schema: Mapping[str, Any]) -> str:
    return Admission._type(schema)


@functools.cache
def _pattern(pattern: str) -> Any:
    return re2.compile(pattern)  # Kubernetes' patterns are RE2 (Go's regexp), as CEL's matches()


def _nodes(schema: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    out = [schema]
    for sub in (schema.get("properties") or {}).values():
        out += _nodes(sub)
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), Mapping):
            out += _nodes(schema[key])
    return out
