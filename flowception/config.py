"""The one config system: a frozen pydantic v2 base, dotted overrides, flatten, identity hash.

Every config tree of the project (model, method, data, train, eval, experiments) is a
:class:`Config`: frozen, unknown keys rejected, lax types (``"3e-4"`` is a float, ``2.0``
an int) but no guessing (``maybe`` is not a bool, ``2.5`` not an int). Each field's
docstring becomes its description, which the CLI shows in ``--help`` and
``flowception config schema`` writes into the JSON Schema the YAML recipes reference.

    cfg = TrainConfig.from_dict(load_yaml("configs/demo-cpu.yaml"))
    cfg = TrainConfig.from_dict(apply_overrides(cfg.to_dict(), ["optim.lr=1e-3"], TrainConfig))
    cfg.flat()            # {"optim.lr": 0.001, ...}: MLflow params
    cfg.identity_hash()   # over the fields that change the science (see ``infra_fields``)

This module is below every package (``model`` and ``pipelines`` are leaves that may
import it); it imports only pydantic and PyYAML.
"""

from __future__ import annotations

import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

C = TypeVar("C", bound="Config")


class Config(BaseModel):
    """Base of every config section: frozen, ``extra="forbid"``, field docstrings as help."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
        protected_namespaces=(),
        arbitrary_types_allowed=False,
    )

    infra_fields: ClassVar[frozenset[str]] = frozenset()
    """Fields left out of :meth:`identity_hash`: throughput, storage and logging knobs."""
    pseudo_fields: ClassVar[dict[str, str]] = {}
    """Keys accepted on input that are not fields (``model.size``), with their help text."""

    # -- construction -------------------------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _no_bool_numbers(cls, data: Any) -> Any:
        """Lax mode reads ``True`` as 1; a bool where a number belongs is a typo, not a count."""
        if isinstance(data, dict):
            for name, value in data.items():
                field = cls.model_fields.get(name)
                if (
                    isinstance(value, bool)
                    and field is not None
                    and field.annotation in (int, float, int | None, float | None)
                ):
                    raise ValueError(f"{cls.__name__}.{name}={value!r}: expected a number")
        return data

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ValueError(describe_error(exc, type(self))) from None

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any] | None) -> C:
        """Validate a nested dict; errors are one ``ValueError`` line naming key and value."""
        if data is not None and not isinstance(data, dict):
            raise ValueError(f"{cls.__name__}: expected a mapping, got {data!r}")
        try:
            return cls.model_validate(data or {})
        except ValidationError as exc:
            raise ValueError(describe_error(exc, cls)) from None

    def replace(self: C, **changes: Any) -> C:
        """A copy with fields replaced, validated again (nested sections may be dicts)."""
        data = {name: getattr(self, name) for name in type(self).model_fields}
        try:
            return type(self).model_validate({**data, **changes})
        except ValidationError as exc:
            raise ValueError(describe_error(exc, type(self))) from None

    # -- serialisation -------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists): YAML, JSON, Ray ``train_loop_config``."""
        return self.model_dump(mode="json")

    def to_yaml(self) -> str:
        """The config as YAML (what ``config.yaml`` in checkpoints and exports holds)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self, prefix: str = "") -> dict[str, Any]:
        """``{"optim.lr": 3e-4, ...}``: MLflow params."""
        return flatten(self.to_dict(), prefix)

    def identity(self) -> dict[str, Any]:
        """``to_dict()`` without :attr:`infra_fields`, recursively: what defines the result."""
        out = {}
        for name in type(self).model_fields:
            if name in self.infra_fields:
                continue
            value = getattr(self, name)
            out[name] = value.identity() if isinstance(value, Config) else _jsonable(value)
        return out

    def identity_hash(self, length: int = 12) -> str:
        """Hex sha256 of the canonical JSON of :meth:`identity` (first ``length`` chars)."""
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:length]


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def describe_error(exc: ValidationError, cls: type) -> str:
    """``key.path=value: why`` for each error of a pydantic ``ValidationError``, on one line."""
    parts = []
    for err in exc.errors(include_url=False):
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])[1:]
        msg = err["msg"]
        if msg.startswith(("Value error, ", "Type error, ")):
            parts.append(msg.split(", ", 1)[1])  # our own validators already name key and value
            continue
        if err["type"] == "extra_forbidden":
            parent = _section(cls, err["loc"][:-1])
            known = sorted([*parent.model_fields, *parent.pseudo_fields]) if parent else []
            parts.append(f"{parent.__name__ if parent else cls.__name__}: unknown key "
                         f"{loc!r}; known: {known}")  # fmt: skip
            continue
        where = f"{cls.__name__}.{loc}" if loc else cls.__name__
        parts.append(f"{where}={err.get('input')!r}: {msg[0].lower()}{msg[1:]}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- #
#                      Walking the tree (keys, help, schema)                  #
# --------------------------------------------------------------------------- #


def _config_type(annotation: Any) -> type[Config] | None:
    """The :class:`Config` subclass inside ``X`` or ``X | None``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, Config):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType):
        found = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, Config)]
        return found[0] if len(found) == 1 else None
    return None


def _section(cls: type[Config], path: tuple) -> type[Config] | None:
    for part in path:
        if not isinstance(part, str) or part not in cls.model_fields:
            return None
        sub = _config_type(cls.model_fields[part].annotation)
        if sub is None:
            return None
        cls = sub
    return cls


def check_key(cls: type[Config], key: str) -> None:
    """Raise ``ValueError`` unless ``key`` (``a.b.c``) names a field or pseudo-field of ``cls``.

    A key may go inside a mapping field (``eval.vbench_weights.dino``).
    """
    parts = key.split(".")
    node: type[Config] = cls
    for i, part in enumerate(parts):
        if part in node.pseudo_fields and i == len(parts) - 1:
            return
        if part not in node.model_fields:
            known = sorted([*node.model_fields, *node.pseudo_fields])
            raise ValueError(f"unknown key {key!r}: {node.__name__} has {known}")
        annotation = node.model_fields[part].annotation
        sub = _config_type(annotation)
        if sub is None:
            if i == len(parts) - 1 or _is_mapping(annotation):
                return
            raise ValueError(f"unknown key {key!r}: {'.'.join(parts[: i + 1])} is not a section")
        node = sub


def _is_mapping(annotation: Any) -> bool:
    return get_origin(annotation) in (dict, typing.Mapping) or annotation is dict


def describe_fields(
    cls: type[Config], prefix: str = "", defaults: Config | None = None
) -> list[tuple[str, str, str, str]]:
    """``(dotted key, type, default, description)`` for every leaf field, in order.

    A section's defaults are those of its parent's default (``TrainConfig.model`` is the
    registry's ``tiny``, not ``ModelConfig()``).
    """
    rows = []
    for name, desc in cls.pseudo_fields.items():
        rows.append((f"{prefix}{name}", "str", "-", desc))
    for name, field in cls.model_fields.items():
        if defaults is not None:
            value = getattr(defaults, name)
        elif field.is_required():
            value = None
        else:
            value = field.get_default(call_default_factory=True)
        sub = _config_type(field.annotation)
        if sub is not None:
            rows.extend(describe_fields(sub, f"{prefix}{name}.", value))
            continue
        shown = "required" if value is None and field.is_required() else _show(value)
        desc = " ".join((field.description or "").split())
        rows.append((f"{prefix}{name}", _type_name(field.annotation), shown, desc))
    return rows


def _type_name(annotation: Any) -> str:
    text = str(annotation).replace("typing.", "")
    return re.sub(r"<class '(\w+)'>", r"\1", text)


def _show(value: Any) -> str:
    if isinstance(value, Config):
        return "{...}"
    return json.dumps(_jsonable(value)) if not isinstance(value, str) else value


def help_epilog(
    cls: type[Config], title: str = "overrides (key=value, anywhere on the line)"
) -> str:
    """Text for ``--help``: every override key with its type, default and description."""
    rows = describe_fields(cls)
    width = min(34, max(len(r[0]) for r in rows))
    lines = [f"{title}:"]
    for key, typ, default, desc in rows:
        lines.append(f"  {key:<{width}} {desc}")
        lines.append(f"  {'':<{width}}   [{typ}, default: {default}]")
    return "\n".join(lines)


def json_schema(cls: type[Config]) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a recipe of ``cls``; pseudo-fields are allowed keys."""
    schema = cls.model_json_schema(mode="validation")
    _add_pseudo(cls, schema, schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


def _add_pseudo(cls: type[Config], node: dict, root: dict) -> None:
    if "$ref" in node:
        node = root["$defs"][node["$ref"].split("/")[-1]]
    props = node.setdefault("properties", {})
    for name, desc in cls.pseudo_fields.items():
        props[name] = {"type": "string", "description": desc}
    for name, field in cls.model_fields.items():
        sub = _config_type(field.annotation)
        if sub is not None and name in props:
            prop = props[name]
            target = next((p for p in prop.get("anyOf", [prop]) if "$ref" in p), prop)
            _add_pseudo(sub, target, root)


# --------------------------------------------------------------------------- #
#                        Dotted overrides and YAML input                      #
# --------------------------------------------------------------------------- #


_EXPONENT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")  # 1e-3: a string to YAML 1.1


class RecipeLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``1e-3`` as a float (YAML 1.2, as editors do)."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML recipe as a dict (safe loader only).

    Raises:
        FileNotFoundError: no such file, naming it.
        ValueError: not YAML, or not a mapping at the top level, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config {str(path)!r} not found")
    try:
        data = yaml.load(path.read_text(), Loader=RecipeLoader) or {}  # noqa: S506 (safe loader)
    except yaml.YAMLError as exc:
        raise ValueError(f"config {str(path)!r}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"config {str(path)!r}: expected a mapping at the top level")
    return data


def parse_value(raw: str) -> Any:
    """A YAML scalar or flow collection; ``1e-3`` is a float and ``none`` is ``None``."""
    if raw.strip().lower() in ("", "none", "null"):
        return None
    try:
        value = yaml.load(raw, Loader=RecipeLoader)  # noqa: S506 (safe loader)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str) and _EXPONENT.match(raw.strip()):
        return float(value)
    return value


def is_override(token: str) -> bool:
    """Whether a command-line token is a ``key.path=value`` override."""
    key, sep, _ = token.partition("=")
    return bool(sep) and not token.startswith("-") and bool(re.fullmatch(r"[\w.]+", key))


def apply_overrides(
    data: dict[str, Any], overrides: list[str] | tuple[str, ...], cls: type[Config] | None = None
) -> dict[str, Any]:
    """Set ``a.b.c=value`` strings (values parsed by :func:`parse_value`) in a copy of ``data``.

    With ``cls``, each key is checked against the config tree first, so a typo is named.

    Raises:
        ValueError: an override without ``=``, with an empty key part, or an unknown key.
    """
    import copy

    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.split(".")
        if not sep or not all(parts):
            raise ValueError(f"override {item!r}: expected key.path=value")
        if cls is not None:
            try:
                check_key(cls, key)
            except ValueError as exc:
                raise ValueError(f"override {item!r}: {exc}") from None
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = parse_value(raw)
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def load(cls: type[C], path: str | Path | None = None, overrides: list[str] | None = None) -> C:
    """A recipe (or the defaults) plus dotted overrides, validated as ``cls``."""
    data = load_yaml(path) if path is not None else {}
    return cls.from_dict(apply_overrides(data, overrides or [], cls))
