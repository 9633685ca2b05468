"""Settings files: YAML read into dataclasses, the one loader every config in the project goes through
(the loop's configs/iteration.py, the trainers' train/config.py, a checkpoint's params.json).

    values = read_yaml("configs/dpo.yaml")
    apply_overrides(values, ["lr=5e-7", "loss_options.label_smoothing=0.1"])
    cfg = from_mapping(DPOConfig, values, "configs/dpo.yaml")

A mapping may leave keys out (the dataclass default is used: a default is written once, in its dataclass)
but may not name a key the dataclass lacks: a typo is an error naming the key and the closest known one.
Values are checked against the field's type (bool, int, float, str, dict, a nested dataclass; an int is
a float too). YAML is read with floats as YAML 1.2 writes them: `1e-6` is a number, not the text PyYAML's
YAML 1.1 makes of it, so no setting has to read numbers out of text.
"""
import difflib
import math
import re
import typing
from dataclasses import fields, is_dataclass
from pathlib import Path

import yaml

from model.errors import FormatError


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, with YAML 1.2's exponent floats: 1e-6 and 5E+3 read as numbers."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),  # YAML 1.1 wants a dot in these (1.0e-6)
    list("-+0123456789."))


def parse_yaml(text: str):
    """A YAML document (or a single value, as in `--set lr=1e-6`) as plain data."""
    return yaml.load(text, Loader=_Loader)


def read_yaml(path) -> dict:
    """A YAML file holding a mapping, or a FormatError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{path}: no such config file")
    try:
        values = parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise FormatError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(values, dict):
        raise FormatError(f"{path}: expected a mapping of keys to values")
    return values


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """`KEY=VALUE` or `SECTION.KEY=VALUE` items written into `values` (VALUE read as YAML; text that is not
    YAML, a backquote say, stays the text as typed and is checked like any other value)."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or "" in key.split("."):
            raise FormatError(f"override {item!r}: expected KEY=VALUE (or SECTION.KEY=VALUE)")
        *parents, last = key.split(".")
        node = values
        for name in parents:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise FormatError(f"override {item!r}: {name} is not a section")
        try:
            node[last] = parse_yaml(text)
        except yaml.YAMLError:
            node[last] = text
    return values


def from_mapping(cls, values, where: str, check_types: bool = True):
    """cls(**values), nested dataclasses included, or a FormatError that starts with `where` (a file, or
    "FILE:" to have keys named after it as "FILE: section.key") and names the key. check_types=False leaves
    the values to cls's own checks (ModelArgs checks every field's range)."""
    label = where.removesuffix(":")
    if not isinstance(values, dict):
        raise FormatError(f"{label}: expected a mapping of {cls.__name__} keys, not {type(values).__name__}")
    known = [f.name for f in fields(cls) if f.init]
    for key in values:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(known)}"
            raise FormatError(f"{label}: unknown key {key!r}{hint}")
    kinds = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        inner = f"{where} {key}" if where.endswith(":") else f"{where}.{key}"  # "FILE: section.key"
        if is_dataclass(kinds[key]):
            kwargs[key] = from_mapping(kinds[key], value, inner, check_types)
        else:
            kwargs[key] = checked(kinds[key], value, inner) if check_types else value
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # the dataclass's own checks (__post_init__)
        raise FormatError(f"{label}: {e}") from None


def checked(kind, value, where: str):
    """value as a setting of type `kind`, or a FormatError naming the key."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    ok = (isinstance(value, bool) if kind is bool else
          isinstance(value, int) and not isinstance(value, bool) if kind is int else
          isinstance(value, float) and math.isfinite(value) if kind is float else
          isinstance(value, kind) if isinstance(kind, type) else True)  # other hints: cls's own checks
    if not ok:
        what = {bool: "true or false", int: "an integer", float: "a finite number", str: "text",
                dict: "a mapping"}.get(kind, getattr(kind, "__name__", str(kind)))
        raise FormatError(f"{where}: expected {what}, got {value!r}")
    return value
