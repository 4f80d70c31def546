"""Reading YAML documents the way Kubernetes reads them, within bounds.

``kubectl`` turns YAML into JSON with sigs.k8s.io/yaml (go-yaml v2 rules) before anything
validates it; PyYAML follows YAML 1.1 and reads some documents differently (``3e-4`` is a
string to it, a number to kubectl). spec.py (``load_job``) and bench/matrix.py read their
files through ``read_yaml_mapping`` here, so a document means the same to trainthrough as
to a cluster:

- plain scalars resolve as go-yaml v2 does, then as the JSON kubectl sends: ``null ~``
  and empty are null; ``true yes on y`` (and capitalised, upper-case forms) are true,
  ``false no off n`` false; integers in decimal, ``0x``, ``0o``, ``0b`` or leading-0 octal,
  ``_`` ignored; floats such as ``3e-4``, ``.5``, ``1.``; a whole float is the integer
  (``32.0`` is 32); a number too large for a float (``1e400``, thousands of digits) and
  anything else (``1:30``, ``2024-01-01``) is a string. ``.inf`` and ``.nan`` have no JSON
  form and are refused, as kubectl refuses them;
- a duplicate key is an error naming both lines (the API server's strict decoding);
- bounds up front: at most ``MAX_BYTES`` (Kubernetes keeps objects under about 1.5 MB),
  no control characters (a NUL, a pasted terminal colour code) but tab and line breaks,
  at most ``MAX_DEPTH`` levels of nesting and ``MAX_NODES`` values once aliases are
  expanded. Every problem is a ``SpecError`` located as ``FILE:LINE:COLUMN``.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode

from trainthrough.errors import FieldError, SpecError

__all__ = [
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "STDIN",
    "parse_yaml",
    "parse_yaml_stream",
    "read_yaml_documents",
    "read_yaml_mapping",
    "resolve_plain",
]

MAX_BYTES = 1 << 20  # 1 MiB; a TrainingJob is a few hundred bytes
MAX_DEPTH = 32  # levels of mappings and lists; a TrainingJob has 5
MAX_NODES = 100_000  # values after alias expansion (a "billion laughs" stops here)
STDIN = "-"  # the file name that means standard input, as kubectl -f - has it

# C0 controls but tab, line feed and carriage return; DEL; C1 controls. YAML forbids them
# in a stream and a terminal would act on them when an error message quotes them.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_CONTROL_NAMES = {0x00: "NUL", 0x1B: "ESC, as in a terminal colour code", 0x7F: "DEL"}

_INT64 = range(-(2**63), 2**63)
# go-yaml v2 resolve.go: the values looked up by name, and the float syntax it accepts.
_BY_NAME: dict[str, Any] = {
    **dict.fromkeys(["y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"], True),
    **dict.fromkeys(["n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"], False),
    **dict.fromkeys(["", "~", "null", "Null", "NULL"], None),
    **dict.fromkeys([".nan", ".NaN", ".NAN"], math.nan),
    **dict.fromkeys([".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"], math.inf),
    **dict.fromkeys(["-.inf", "-.Inf", "-.INF"], -math.inf),
}
_YAML_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
# Go's strconv.ParseInt(s, 0, 64) syntax after go-yaml removed the underscores.
_GO_INT = re.compile(r"[-+]?(?:0[xX][0-9a-fA-F]+|0[oO]?[0-7]+|0[bB][01]+|[1-9][0-9]*|0)")
_PLAIN_TAG = "tag:trainthrough.io,2025:plain"


def resolve_plain(text: str) -> Any:
    """The JSON value kubectl makes of the plain (unquoted) YAML scalar ``text``."""
    if text in _BY_NAME:
        return _as_json(_BY_NAME[text], text)
    if text[0] == ".":  # go-yaml: a float or a string
        return _as_json(_float(text), text) if _YAML_FLOAT.fullmatch(text) else text
    if not (text[0].isascii() and (text[0].isdigit() or text[0] in "+-")):
        return text
    plain = text.replace("_", "")
    if _GO_INT.fullmatch(plain) and len(plain) <= 70:  # 64 binary digits, a sign, a prefix
        sign, digits = (-1, plain[1:]) if plain[0] == "-" else (1, plain.lstrip("+"))
        value = sign * _go_int(digits)
        if value in _INT64 or 0 <= value < 2**64:  # ParseInt, then ParseUint
            return _as_json(value, text)
    if _YAML_FLOAT.fullmatch(plain):
        return _as_json(_float(plain), text)
    return text


def _go_int(digits: str) -> int:
    prefix = digits[:2].lower()
    if prefix in ("0x", "0o", "0b"):
        return int(digits[2:], {"0x": 16, "0o": 8, "0b": 2}[prefix])
    return int(digits, 8) if len(digits) > 1 and digits[0] == "0" else int(digits)


def _float(text: str) -> float | str:
    value = float(text)  # text matches _YAML_FLOAT
    # Go's ParseFloat fails out of range (1e400), and go-yaml then keeps the string.
    return value if math.isfinite(value) else text


def _as_json(value: Any, text: str) -> Any:
    """As the value travels to the API server: JSON has whole floats as integers and
    integers past int64 as floats, and no infinity or NaN."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{text} is not a number JSON can hold (a Kubernetes object is JSON)")
        if value.is_integer() and int(value) in _INT64:
            return int(value)
    if isinstance(value, int) and value not in _INT64:
        return float(value)
    return value


def _key(value: Any) -> str:
    """A mapping key as JSON has it: always a string (``y:`` is the key "true", as in kubectl)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float, str)):
        return str(value)
    raise TypeError(type(value).__name__)


class _KubernetesLoader(yaml.SafeLoader):
    """SafeLoader with go-yaml v2's plain scalars, string keys, duplicate keys refused,
    and the depth and size bounds."""

    yaml_implicit_resolvers: dict[Any, list[tuple[str, re.Pattern[str]]]] = {
        "<": [("tag:yaml.org,2002:merge", re.compile(r"<<$"))],
        None: [(_PLAIN_TAG, re.compile(""))],  # everything else: resolve_plain decides
    }

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0

    def compose_node(self, parent: Node | None, index: Any) -> Node:
        # The composer recurses per level: bound the depth before Python's stack is.
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ConstructorError(None, None, f"nested more than {MAX_DEPTH} levels deep", mark)
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def construct_plain(self, node: ScalarNode) -> Any:
        try:
            return resolve_plain(node.value)
        except ValueError as exc:
            raise ConstructorError(None, None, str(exc), node.start_mark) from None

    def construct_typed(self, node: Node) -> Any:
        """``!!int``, ``!!float``, ``!!bool`` and ``!!null`` read their text as kubectl does."""
        kind = node.tag.rpartition(":")[2]
        value = self.construct_plain(node) if isinstance(node, ScalarNode) and node.value else None
        wanted = {"int": (int,), "float": (int, float), "bool": (bool,), "null": (type(None),)}[kind]
        if isinstance(value, bool) and kind != "bool" or not isinstance(value, wanted):
            raise ConstructorError(None, None, f"{node.value!r} is not a valid !!{kind}", node.start_mark)
        return value

    def construct_unsupported(self, node: Node) -> Any:
        tag = node.tag.replace("tag:yaml.org,2002:", "!!")
        raise ConstructorError(None, None, f"{tag} values have no JSON form", node.start_mark)

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[str, Any]:  # type: ignore[override]
        if not isinstance(node, MappingNode):
            raise ConstructorError(None, None, f"expected a mapping, found {node.id}", node.start_mark)
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # merged keys are defaults the mapping's own keys override
            key = self._mapping_key(key_node)
            if key in seen:
                raise ConstructorError(
                    None, None, f"duplicate key {key!r} (first at line {seen[key]})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line + 1
        self.flatten_mapping(node)
        return {self._mapping_key(k): self.construct_object(v, deep=deep) for k, v in node.value}

    def _mapping_key(self, key_node: Node) -> str:
        try:
            return _key(self.construct_object(key_node, deep=True))
        except TypeError:
            raise ConstructorError(None, None, "a key must be a string or a number", key_node.start_mark) from None


_KubernetesLoader.add_constructor(_PLAIN_TAG, _KubernetesLoader.construct_plain)
# "<<" merges as a key (flatten_mapping) and is the string "<<" anywhere else.
_KubernetesLoader.add_constructor("tag:yaml.org,2002:merge", _KubernetesLoader.construct_scalar)
for _tag in ("int", "float", "bool", "null"):
    _KubernetesLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _KubernetesLoader.construct_typed)
for _tag in ("timestamp", "binary", "set", "omap", "pairs"):
    _KubernetesLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _KubernetesLoader.construct_unsupported)


def parse_yaml(text: str, source: str = "<document>") -> Any:
    """The one YAML document in ``text`` as kubectl reads it (None for an empty one).
    Raises SpecError located at ``source:LINE:COLUMN``."""
    return _parse(text, source)[0]


def _check_text(text: str, source: str) -> None:
    """The bounds that hold before any YAML is read: size and control characters."""
    if len(text) > MAX_BYTES or len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise SpecError([FieldError(source, _too_large(len(text.encode("utf-8", "replace"))))], source)
    control = _CONTROL.search(text)
    if control is not None:
        line = text.count("\n", 0, control.start()) + 1
        column = control.start() - (text.rfind("\n", 0, control.start()) + 1) + 1
        code = ord(control.group())
        name = _CONTROL_NAMES.get(code, "a control character")
        problem = f"control character U+{code:04X} ({name}) is not allowed in a document"
        raise SpecError([FieldError(f"{source}:{line}:{column}", problem)], source)


def _construct(loader: _KubernetesLoader, node: Node | None, source: str) -> tuple[Any, int | None]:
    document = loader.construct_document(node) if node is not None else None
    if _count(document, MAX_NODES + 1) > MAX_NODES:
        problem = f"more than {MAX_NODES} values once aliases are expanded"
        raise SpecError([FieldError(source, problem)], source)
    return document, (node.start_mark.line + 1 if node is not None else None)


def _parse(text: str, source: str) -> tuple[Any, int | None]:
    """The one document and the line it starts on."""
    _check_text(text, source)
    loader = None
    try:
        loader = _KubernetesLoader(text)  # the reader checks the characters here already
        node = loader.get_single_node()  # also rejects a file with several documents
        return _construct(loader, node, source)
    except yaml.YAMLError as exc:
        raise SpecError([_yaml_error(source, exc)], source) from None
    finally:
        if loader is not None:
            loader.dispose()


def parse_yaml_stream(text: str, source: str = "<document>") -> list[tuple[Any, int]]:
    """Every document of a ``---``-separated stream, as kubectl reads a file it applies,
    with the line each starts on; empty documents are skipped, as kubectl skips them.
    The bounds hold for the whole stream (it is one file) and for each document."""
    _check_text(text, source)
    loader = None
    documents: list[tuple[Any, int]] = []
    try:
        loader = _KubernetesLoader(text)
        while loader.check_node():
            document, line = _construct(loader, loader.get_node(), source)
            if document is not None and line is not None:
                documents.append((document, line))
    except yaml.YAMLError as exc:
        raise SpecError([_yaml_error(source, exc)], source) from None
    finally:
        if loader is not None:
            loader.dispose()
    return documents


def _read_text(name: str) -> str:
    """The UTF-8 text of file ``name`` (``-``: standard input), at most ``MAX_BYTES``."""
    try:
        if name == STDIN:
            data = sys.stdin.buffer.read(MAX_BYTES + 1)
        else:
            with open(name, "rb") as f:
                data = f.read(MAX_BYTES + 1)  # never more than the bound into memory
        if len(data) > MAX_BYTES:
            size = os.path.getsize(name) if name != STDIN else len(data)
            raise SpecError([FieldError(name, _too_large(size))], name)
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise SpecError([FieldError(f"{name}:{line}", f"not UTF-8 text ({exc.reason})")], name) from None
    except OSError as exc:
        raise SpecError([FieldError(name, f"cannot read: {exc.strerror or exc}")], name) from None


def read_yaml_mapping(path: str | os.PathLike[str], what: str) -> Mapping[str, Any]:
    """One YAML document that must be a mapping, read from ``path`` as ``parse_yaml``
    reads it. Unreadable, oversized and non-mapping files are SpecErrors too."""
    name = os.fspath(path)
    document, line = _parse(_read_text(name), name)
    return _mapping(document, f"{name}:{line}" if line is not None else name, what, name)


def read_yaml_documents(path: str | os.PathLike[str], what: str) -> list[tuple[str, Mapping[str, Any]]]:
    """Every document of a multi-document YAML file (``-``: standard input), each with
    where it starts (``FILE:LINE``); a ``kind: List`` contributes its items, as kubectl
    expands one. A document that is not a mapping is a SpecError at its line."""
    name = os.fspath(path)
    found: list[tuple[str, Mapping[str, Any]]] = []
    for document, line in parse_yaml_stream(_read_text(name), name):
        where = f"{name}:{line}"
        document = _mapping(document, where, what, name)
        if document.get("kind") == "List" and isinstance(document.get("items"), list):
            found += [(f"{where} items[{i}]", _mapping(item, f"{where} items[{i}]", what, name)) for i, item in enumerate(document["items"])]
        else:
            found.append((where, document))
    return found


def _mapping(document: Any, where: str, what: str, source: str) -> Mapping[str, Any]:
    """`document` when it is a mapping, else the SpecError located at `where`."""
    if not isinstance(document, Mapping):
        raise SpecError([FieldError(where, f"a {what} document must be a mapping, got {_describe(document)}")], source)
    return document


def _too_large(size: int) -> str:
    return f"is {size / 2**20:.1f} MiB; a document is at most {MAX_BYTES // 2**20} MiB"


def _describe(value: Any) -> str:
    if value is None:
        return "an empty document"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value if not isinstance(value, str) or len(value) <= 60 else value[:57] + "...")


def _count(value: Any, limit: int) -> int:
    """How many values ``value`` holds, counting shared (aliased) ones each time; stops
    at ``limit`` so that an exponential alias expansion costs no more than that."""
    total, todo = 0, [value]
    while todo and total < limit:
        item = todo.pop()
        total += 1
        if isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, list):
            todo.extend(item)
    return total


def _yaml_error(name: str, exc: yaml.YAMLError) -> FieldError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else name
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    detail = f"{problem} ({context})" if context else problem
    return FieldError(where, f"invalid YAML: {detail}")
