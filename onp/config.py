"""Typed, frozen run configurations: YAML file -> dataclass, overridden from the command line.

Each entry point defines a frozen dataclass; :func:`parse_config` builds an ``argparse`` parser
from its fields (``--field-name``), reads ``--config FILE.yaml`` if given, applies the flags on
top and rejects unknown keys. The resolved config is saved beside every result.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import yaml

from onp.errors import ONPInputError

ConfigT = TypeVar("ConfigT")


def _field_parser(annotation: Any) -> tuple[Any, str | None]:
    """Return (argparse ``type``, ``nargs``) for a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _field_parser(args[0])
    if origin in (typing.Union, types.UnionType) and set(args) == {int, float}:
        return _parse_number, None
    if origin in (tuple, list):
        return (args[0] if args else str), "+"
    if origin is dict or annotation in (dict, list):
        return json.loads, None
    if annotation is bool:
        return _parse_bool, None
    if annotation in (int, float, str):
        return annotation, None
    return str, None


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")


def _parse_number(text: str) -> int | float:
    """A count (``100``) or a fraction (``0.05``), as the text spells it."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


_SCALARS: dict[Any, tuple[type, ...]] = {bool: (bool,), int: (int,), float: (int, float),
                                         str: (str,)}


def _coerce(value: Any, annotation: Any) -> Any:
    """``value`` as the field type ``annotation`` wants; ``TypeError`` if it is not one."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        # an int stays an int where the field takes one (a count), else the first type that fits
        for option in sorted((a for a in args if a is not type(None)), key=lambda a: a is not int):
            try:
                return _coerce(value, option)
            except TypeError:
                continue
        raise TypeError
    if annotation in _SCALARS:
        if isinstance(value, bool) and annotation is not bool:
            raise TypeError
        if not isinstance(value, _SCALARS[annotation]):
            raise TypeError
        return float(cast(float, value)) if annotation is float else value
    if origin is tuple or annotation is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeError
        return tuple(_coerce(v, args[0]) for v in value) if args else tuple(value)
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise TypeError
        return value
    return value


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def config_from_dict(cls: type[ConfigT], values: dict[str, Any], where: str) -> ConfigT:
    """Build ``cls`` from ``values``; unknown keys and wrong types are errors naming ``where``."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    if not isinstance(values, dict):
        raise ONPInputError(f"{where}: expected a mapping of config keys, found "
                            f"{type(values).__name__}")
    unknown = sorted(set(values) - names)
    if unknown:
        raise ONPInputError(f"{where}: unknown config keys {unknown}; known: {sorted(names)}")
    hints = typing.get_type_hints(cls)
    converted = {}
    for key, value in values.items():
        try:
            converted[key] = _coerce(value, hints[key])
        except TypeError:
            raise ONPInputError(f"{where}: {key} must be {_type_name(hints[key])}, found "
                                f"{value!r} ({type(value).__name__})") from None
    return cls(**converted)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; a missing file or a non-mapping is an :class:`ONPInputError`."""
    path = Path(path)
    if not path.is_file():
        raise ONPInputError(f"{path}: config file not found")
    try:
        payload = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ONPInputError(f"{path}: not valid YAML ({error})".replace("\n", " ")) from None
    if not isinstance(payload, dict):
        raise ONPInputError(
            f"{path}: expected a YAML mapping of config keys, found {type(payload).__name__}"
        )
    return payload


def parse_config(
    cls: type[ConfigT],
    argv: Sequence[str] | None = None,
    description: str = "",
    default_config: str | Path | None = None,
) -> ConfigT:
    """Parse command-line flags into a frozen config dataclass.

    Precedence: dataclass defaults < ``default_config`` YAML < ``--config`` YAML < flags.

    Args:
        cls: The config dataclass.
        argv: Arguments (default: ``sys.argv[1:]``).
        description: Help text for ``--help``.
        default_config: YAML file applied before ``--config`` (default: none).

    Returns:
        The resolved config.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, help="YAML file of config keys")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML (a --config file) and exit")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        kind, nargs = _field_parser(hints[f.name])
        help_text = f.metadata.get("help", "")
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            type=kind,
            nargs=nargs,
            default=argparse.SUPPRESS,
            help=help_text,
        )
    namespace = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    if default_config is not None and Path(default_config).is_file():
        values.update(load_yaml(default_config))
    config_file = namespace.pop("config", None)
    print_only = namespace.pop("print_config", False)
    if config_file is not None:
        values.update(load_yaml(config_file))
    values.update(namespace)
    config = config_from_dict(cls, values,
                              where=str(config_file or default_config or "command line"))
    if print_only:
        print(config_to_yaml(config), end="")
        raise SystemExit(0)
    return config


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-ready dict."""
    return dataclasses.asdict(config)


def config_to_yaml(config: Any) -> str:
    """A config dataclass as YAML that ``--config`` reads back (tuples written as lists)."""
    plain = json.loads(json.dumps(config_to_dict(config)))
    return yaml.safe_dump(plain, sort_keys=False, default_flow_style=None)


def reference_table(cls: type) -> str:
    """A Markdown table of a config dataclass's settings: key, flag, type, default, help."""
    hints = typing.get_type_hints(cls)
    rows = ["| key | flag | type | default | what it sets |", "|---|---|---|---|---|"]
    defaults = config_to_dict(cls())
    for item in dataclasses.fields(cls):
        default = json.dumps(defaults[item.name])
        help_text = str(item.metadata.get("help", "")).replace("|", "\\|")
        rows.append(f"| `{item.name}` | `--{item.name.replace('_', '-')}` | "
                    f"{_type_name(hints[item.name]).replace(' | ', ' or ')} | `{default}` | "
                    f"{help_text} |")
    return "\n".join(rows) + "\n"
