"""Pydantic's ValidationError as the one-line ConfigError users see.

The run config (`inat.config.RunConfig`) and the cluster profile (`jobs.cluster.ClusterProfile`) are
pydantic models; this turns what pydantic reports into one line naming the source, the key, the value
and what is allowed, e.g.

    c.yaml: key 'dropout' = 1.5 is invalid; allowed: 0 <= dropout < 1
    c.yaml: unknown key 'filters' (known keys: activation, batch_norm, ...)

What is allowed comes from the field itself: its `Literal` choices, its `Field(ge=..., lt=...)` bounds
and its `description`. A validator that knows better raises `invalid(...)` with its own words, or
`says(...)` for a whole line of its own. Several problems at once: unknown keys first, then the first
bad key in the order the user gave them, then rules across keys.
"""

from __future__ import annotations

from typing import Any, Literal, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from .errors import ConfigError

_UNKNOWN = ("extra_forbidden", "unexpected_keyword_argument", "invalid_key")


def invalid(message: str = "", **ctx: Any) -> PydanticCustomError:
    """A bad value in a validator's own words: "key 'k' = v is invalid; {message}".

    ctx may name the `key` and `value` to show (a rule across keys; the value after conversion), and
    a `detail` that a model explained by its keys (see `one_line`) adds to what the key expects.
    """
    return PydanticCustomError("inat_invalid", message, ctx)


def says(line: str) -> PydanticCustomError:
    """A whole message of a validator's own, after the source; `{key}` in it becomes the key."""
    return PydanticCustomError("inat_says", line)


def one_line(err: ValidationError, source: str, model: type, data: Any = None,
             explain_keys: bool = False) -> ConfigError:
    """The ConfigError for `err`, raised by validating `data` (a mapping, as the user wrote it) as `model`.

    explain_keys: every bad value gets "expected <what the key takes>" (the cluster profile's style)
    rather than "allowed: <the rule it broke>" (the run config's).
    """
    order = {key: i for i, key in enumerate(data if isinstance(data, dict) else ())}

    def rank(e: dict) -> tuple:
        top = e["loc"][0] if e["loc"] else None
        return (e["type"] not in _UNKNOWN, not e["loc"], order.get(top, len(order)))

    e = min(err.errors(), key=rank)
    loc, value = e["loc"], e["input"]
    if e["type"] not in _UNKNOWN and any(isinstance(part, int) for part in loc):
        # An item of a list: name the list and show all of it.
        loc = loc[:[isinstance(part, int) for part in loc].index(True)]
        value = _dig(data, loc, value)
    where = ".".join(str(part) for part in loc)
    holder, field = _field_at(model, loc)
    if e["type"] in _UNKNOWN:
        known = ", ".join(sorted(holder.__pydantic_fields__))
        return ConfigError(f"{source}: unknown key '{where}' (known keys: {known})")
    if e["type"] == "inat_says":
        return ConfigError(f"{source}: {e['msg'].replace('{key}', where)}")
    ctx = e.get("ctx") or {}
    where = ctx.get("key", where)
    value = ctx.get("value", value)
    name = str(loc[-1]) if loc else where
    if explain_keys:
        detail = f"expected {describe(name, field, noun=True)}{ctx.get('detail', '')}"
    elif e["type"] == "inat_invalid":
        detail = e["msg"]
    else:
        detail = f"allowed: {describe(name, field) or e['msg']}"
    return ConfigError(f"{source}: key '{where}' = {value!r} is invalid; {detail}")


def describe(name: str, field: Any, noun: bool = False) -> str:
    """What a field takes, from its Literal choices, its bounds and its description.

    Bounds: "0 <= dropout < 1"; one bound: "an integer >= 1", and for numbers "weight_decay >= 0",
    or with noun=True "a number > 0". The description follows a bound in parentheses, or stands alone.
    """
    if field is None:
        return ""
    choices = [a for a in _union(field.annotation) if get_origin(a) is Literal]
    if choices:
        return ", ".join(str(c) for c in get_args(choices[0]))
    low = [(m.ge, "<=") for m in field.metadata if isinstance(m, Ge)] + \
          [(m.gt, "<") for m in field.metadata if isinstance(m, Gt)]
    high = [(m.le, "<=") for m in field.metadata if isinstance(m, Le)] + \
           [(m.lt, "<") for m in field.metadata if isinstance(m, Lt)]
    text = ""
    if low and high:
        text = f"{low[0][0]} {low[0][1]} {name} {high[0][1]} {high[0][0]}"
    elif low or high:
        bound, op = low[0] if low else high[0]
        op = op.replace("<", ">") if low else op
        subject = "an integer" if int in _union(field.annotation) else ("a number" if noun else name)
        text = f"{subject} {op} {bound}"
    if text and field.description:
        return f"{text} ({field.description})"
    return text or field.description or ""


def _union(annotation: Any) -> tuple:
    """`int | None` -> (int, NoneType); anything else -> (it,)."""
    args = get_args(annotation)
    return args if args and get_origin(annotation) is not Literal and type(None) in args else (annotation,)


def _dig(data: Any, loc: tuple, default: Any) -> Any:
    for part in loc:
        if not isinstance(data, dict) or part not in data:
            return default
        data = data[part]
    return data


def _field_at(model: type, loc: tuple) -> tuple[type, Any]:
    """The model that holds the last key of `loc`, and that key's FieldInfo (None: no such field).

    Walks models (their fields) and dicts (their values): ('stages', 'test', 'time') is the `time`
    field of the model that the `stages` dict maps 'test' to.
    """
    kind, holder, field = model, model, None
    for part in loc:
        if hasattr(kind, "__pydantic_fields__"):
            holder, field = kind, kind.__pydantic_fields__.get(part)
            kind = field.annotation if field is not None else None
        elif get_origin(kind) is dict:
            kind, field = get_args(kind)[1], None
        else:
            break
    return holder, field
