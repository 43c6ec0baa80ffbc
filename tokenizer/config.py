"""Typed run configs: a YAML preset of sections (`model`, `loss`, `data`, `training`) plus command
line overrides `--section.key value` (or `--key value` when the key names one field).

Every key is checked against its section's schema (a dataclass, or a constructor signature for
`model`): an unknown key or a value of the wrong type is a ValueError that names it.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import types
import typing

import yaml


def _coerce(value, annotation, where: str):
    """value (from YAML or a command line string) as `annotation`, or a ValueError naming `where`."""
    if isinstance(annotation, str):  # an annotation get_type_hints could not resolve: accept as given
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError(errors[0] if errors else f"{where}: got {value!r}")
    if annotation is inspect.Parameter.empty or annotation is typing.Any:
        return value
    if isinstance(value, str) and annotation in (int, float, bool, list, tuple, dict):
        value = yaml.safe_load(value) if annotation is not float else value
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif annotation in (list, tuple) or origin in (list, tuple):
        if isinstance(value, (list, tuple)):
            return tuple(value) if (annotation is tuple or origin is tuple) else list(value)
    elif annotation is dict or origin is dict:
        if isinstance(value, dict):
            return value
    else:
        return value
    raise ValueError(f"{where} must be {getattr(annotation, '__name__', annotation)}, got {value!r}")


def _schema_fields(schema) -> dict:
    """name -> annotation for a dataclass or a callable's keyword parameters."""
    if dataclasses.is_dataclass(schema):
        hints = typing.get_type_hints(schema)
        return {f.name: hints[f.name] for f in dataclasses.fields(schema)}
    sig = inspect.signature(schema)
    try:
        hints = typing.get_type_hints(schema)
    except Exception:
        hints = {}
    return {n: hints.get(n, p.annotation) for n, p in sig.parameters.items()
            if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _check_section(section: str, values: dict, schema) -> dict:
    fields = _schema_fields(schema)
    out = {}
    for key, value in values.items():
        if key not in fields:
            raise ValueError(f"unknown config key {section}.{key}; valid keys: {sorted(fields)}")
        out[key] = _coerce(value, fields[key], f"{section}.{key}")
    return out


def parse_overrides(argv: list[str]) -> list[tuple[str, str]]:
    pairs, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--"):
            raise ValueError(f"expected --key value, got {arg!r}")
        if "=" in arg:
            key, value = arg[2:].split("=", 1)
            i += 1
        elif i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            key, value = arg[2:], argv[i + 1]
            i += 2
        else:  # a bare flag means true
            key, value = arg[2:], "true"
            i += 1
        pairs.append((key.replace("-", "_"), value))
    return pairs


def load_config(path: str | None, overrides: list[str], schemas: dict) -> dict:
    """{section: {key: value}} from a YAML file and overrides, validated against `schemas`
    ({section: dataclass or callable}). Dataclass sections come back as dataclass instances."""
    raw: dict = {}
    if path is not None:
        if not os.path.isfile(path):
            raise ValueError(f"config file not found: {path!r}")
        with open(path) as f:
            raw = yaml.safe_load(f) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: expected a mapping of sections {sorted(schemas)}")
    for section in raw:
        if section not in schemas:
            raise ValueError(f"unknown config section {section!r} in {path}; valid sections: {sorted(schemas)}")
    merged = {s: dict(raw.get(s) or {}) for s in schemas}
    for key, value in parse_overrides(overrides):
        if "." in key:
            section, field = key.split(".", 1)
            if section not in schemas:
                raise ValueError(f"unknown config section in --{key}; valid sections: {sorted(schemas)}")
        else:
            owners = [s for s, sc in schemas.items() if key in _schema_fields(sc)]
            if len(owners) != 1:
                raise ValueError(f"--{key}: " + ("unknown config key" if not owners else
                                                 f"ambiguous, use one of {[o + '.' + key for o in owners]}"))
            section, field = owners[0], key
        merged[section][field] = value
    out = {}
    for section, schema in schemas.items():
        values = _check_section(section, merged[section], schema)
        out[section] = schema(**values) if dataclasses.is_dataclass(schema) else values
    return out
