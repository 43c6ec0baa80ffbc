"""Typed run configs: a YAML preset of sections (`model`, `loss`, `data`, `training`) plus command
line overrides `--section.key value` (or `--key value` when the key names one field).

Every key is checked against its section's schema (a dataclass, or a constructor signature for
`model`): an unknown key or a value of the wrong type is a ValueError that names it. `--config` takes
a YAML file or the name of a shipped preset (`lcgen.configs`). `--help` lists every key of every
section with its type and default, and a run writes its fully resolved configuration (`config.yaml`).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import os
import types
import typing

import yaml

from lcgen.configs import resolve_config


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
        number = None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                pass
        if number is not None:
            if not math.isfinite(number):  # NaN would pass every range check and fail mid-run
                raise ValueError(f"{where} must be a finite number, got {value!r}")
            return number
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
        path = resolve_config(path)
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


def _defaults(schema) -> dict:
    """name -> default of every field of a section (MISSING when it has none)."""
    if dataclasses.is_dataclass(schema):
        return {f.name: (f.default if f.default is not dataclasses.MISSING else
                         f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
                for f in dataclasses.fields(schema)}
    params = inspect.signature(schema).parameters
    return {n: (dataclasses.MISSING if params[n].default is inspect.Parameter.empty else params[n].default)
            for n in _schema_fields(schema)}


def _type_name(annotation) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    if annotation is inspect.Parameter.empty:
        return "any"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def help_text(schemas: dict) -> str:
    """Every key of every section: `--section.key TYPE (default: ...)`, grouped by section."""
    lines = []
    for section, schema in schemas.items():
        fields, defaults = _schema_fields(schema), _defaults(schema)
        lines.append(f"\n{section}:")
        for name, annotation in fields.items():
            d = defaults[name]
            default = "required" if d is dataclasses.MISSING else f"default: {d!r}"
            lines.append(f"  --{section}.{name} {_type_name(annotation)}  ({default})")
    return "\n".join(lines)


def parse_run_config(argv, schemas: dict, prog: str, description: str) -> dict:
    """`--config NAME_OR_FILE` plus `--key value` overrides -> a validated config; `-h` prints every key."""
    p = argparse.ArgumentParser(prog=prog, description=description, add_help=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="config keys (override any of them with --section.key VALUE, or --key VALUE "
                                       "when only one section has that key):" + help_text(schemas))
    p.add_argument("-h", "--help", action="help", help="show every config key with its type and default, then exit")
    p.add_argument("--config", default=None, help="a preset name (e.g. fashion-mnist-looc-cpu) or a YAML file")
    args, overrides = p.parse_known_args(argv)
    return load_config(args.config, overrides, schemas)


def _plain(value):
    """A value as YAML/JSON can hold it (tuples as lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def resolved_config(cfg: dict, schemas: dict) -> dict:
    """{section: {key: value}} with every key of every section, defaults included: what the run used."""
    out = {}
    for section, schema in schemas.items():
        values = cfg[section] if isinstance(cfg[section], dict) else vars(cfg[section])
        defaults = {k: v for k, v in _defaults(schema).items() if v is not dataclasses.MISSING}
        out[section] = {k: _plain(v) for k, v in {**defaults, **values}.items()}
    return out


def write_config(resolved: dict, path: str) -> None:
    """The resolved configuration as YAML, written atomically (it loads back with `--config path`)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        yaml.safe_dump(resolved, f, sort_keys=False)
    os.replace(tmp, path)


def tracker_hparams(resolved: dict) -> dict:
    """`section.key` -> value for trackers: numbers, bools and strings keep their type; None stays None
    (tensorboard skips it); lists and dicts, which trackers cannot hold, become their YAML text."""
    out = {}
    for section, values in resolved.items():
        for k, v in values.items():
            out[f"{section}.{k}"] = v if v is None or isinstance(v, (bool, int, float, str)) else \
                yaml.safe_dump(v, default_flow_style=True).strip()
    return out
