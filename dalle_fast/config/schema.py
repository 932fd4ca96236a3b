"""What a config section is: the base class that type-checks a frozen dataclass's annotated fields,
and the round trip of a top-level section through JSON and a ``config.json`` file."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from ..atomic import write_atomic

CONFIG_FILE = "config.json"

_File = TypeVar("_File", bound="ConfigFile")


class Section:
    """Base of all config sections: type checks of the annotated fields (ints stay ints, ints
    given for floats become floats, Literal fields must take one of their values; nested
    sections must be of their class). Other field types are checked by the section itself."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            self._check_type(f.name, hints[f.name])

    def _fail(self, name: str, message: str) -> typing.NoReturn:
        raise ValueError(f"{type(self).__name__}.{name}: {message}")

    def _check_type(self, name: str, hint: Any) -> None:
        value = getattr(self, name)
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                self._fail(name, f"must be a finite number, got {value!r}")
            object.__setattr__(self, name, float(value))
        elif hint in (int, str, bool):
            if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
                self._fail(name, f"must be of type {hint.__name__}, got {value!r}")
        elif typing.get_origin(hint) is Literal:
            if value not in typing.get_args(hint):
                self._fail(name, f"must be one of {list(typing.get_args(hint))}, got {value!r}")
        elif dataclasses.is_dataclass(hint) and not isinstance(value, hint):
            self._fail(name, f"must be a {hint.__name__}, got {type(value).__name__}")

    def _require(self, name: str, ok: bool, what: str) -> None:
        if not ok:
            self._fail(name, f"must be {what}, got {getattr(self, name)!r}")


class ConfigFile(Section):
    """A top-level section: a plain nested dict of JSON types, and a ``config.json`` file."""

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON types only)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls: type[_File], data: Mapping[str, Any]) -> _File:
        """Inverse of :meth:`to_dict`. Unknown or missing keys, and invalid values, raise
        ``ValueError`` naming the key path (e.g. ``vae.optim.lr``)."""
        return _build(cls, data, "")

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` atomically (temp file in the same folder, then ``os.replace``).
        ``path`` is the file (``*.json``) or a run directory to write ``config.json`` into (created
        if missing). Returns the file written."""
        path = _config_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        write_atomic(path, lambda tmp: Path(tmp).write_text(text))
        return path

    @classmethod
    def load(cls: type[_File], path: str | os.PathLike) -> _File:
        """Read a file written by :meth:`save` (the ``*.json`` file, or the run directory holding it)."""
        path = _config_path(path)
        with open(path) as f:
            data = json.load(f)
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None


def _config_path(path: str | os.PathLike) -> Path:
    """A path ending in ``.json`` is the config file itself; any other path is a run directory."""
    path = Path(path)
    return path if path.suffix == ".json" else path / CONFIG_FILE


def _build(cls: type, data: Any, where: str) -> Any:
    """Construct section ``cls`` from a JSON object, recursing into nested sections; ``where`` is
    the key path of ``data`` (``""`` at the top, ``"vae."`` below)."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{where.rstrip('.') or 'config'}: must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [key for key in data if key not in fields]
    if unknown:
        raise ValueError(f"unknown key '{where}{unknown[0]}'; {cls.__name__} has {sorted(fields)}")
    missing = [name for name, f in fields.items() if name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"missing key '{where}{missing[0]}' ({cls.__name__} has no default for it)")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _build(hints[name], value, f"{where}{name}.") if dataclasses.is_dataclass(hints[name])
              else value for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ValueError(f"in {where.rstrip('.') or 'config'}: {e}") from None
