"""What a config section is: the base class that type-checks a frozen dataclass's annotated fields,
and the round trip of a top-level section through JSON and a ``config.json`` file.

A ``config.json`` records, beside the settings, the ``dalle_fast_version`` that wrote it and its
``schema`` number (``SCHEMA``), so that runs stay loadable (docs/design.md#the-run-directory):

- a field added later (with a default, as every new field must have) is missing from older
  files: it gets its default, and loading says so once on stderr;
- the schema number changes only when a file of the old layout could not be read as the new one
  (a field renamed, removed, or its meaning changed); a file of a newer schema, or with settings
  this version does not know, is refused with a message saying which version wrote it;
- a file without the two keys was written before they were recorded: it is schema 1.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from .. import __version__
from ..atomic import write_atomic

CONFIG_FILE = "config.json"
SCHEMA = 1  # the layout of config.json; see the module doc for when it changes
SCHEMA_KEY, VERSION_KEY = "schema", "dalle_fast_version"  # beside the settings in config.json
_said: set[tuple[str, tuple[str, ...]]] = set()  # (file, defaulted fields) already reported on stderr

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
        """Inverse of :meth:`to_dict`, also of the contents of a ``config.json`` (its ``schema`` and
        ``dalle_fast_version`` are checked and dropped; see :meth:`load`). Unknown keys, missing
        keys without a default, and invalid values raise ``ValueError`` naming the key path
        (e.g. ``vae.optim.lr``)."""
        return _read(cls, data, [])

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` atomically (temp file in the same folder, then ``os.replace``).
        ``path`` is the file (``*.json``) or a run directory to write ``config.json`` into (created
        if missing). Returns the file written."""
        path = _config_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({SCHEMA_KEY: SCHEMA, VERSION_KEY: __version__, **self.to_dict()}, indent=2) + "\n"
        write_atomic(path, lambda tmp: Path(tmp).write_text(text))
        return path

    @classmethod
    def load(cls: type[_File], path: str | os.PathLike) -> _File:
        """Read a file written by :meth:`save` (the ``*.json`` file, or the run directory holding
        it), by this version or an older one (see the module doc): settings the file lacks get
        their defaults, said once per file on stderr. A newer schema, or settings unknown here,
        raise ``ValueError`` naming the version that wrote the file."""
        path = _config_path(path)
        with open(path) as f:
            data = json.load(f)
        defaulted: list[str] = []
        try:
            config = _read(cls, data, defaulted)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        said = (str(path.resolve()), tuple(defaulted))
        if defaulted and said not in _said:
            _said.add(said)
            values = ", ".join(f"{key} = {_value(config, key)!r}" for key in defaulted)
            print(f"note: {path} was written by {_writer(data)} (config schema {data.get(SCHEMA_KEY, 1)}) before "
                  f"these settings existed; they take their defaults: {values}", file=sys.stderr)
        return config


def _writer(data: Mapping[str, Any]) -> str:
    version = data.get(VERSION_KEY)
    return f"dalle_fast {version}" if version is not None else "a dalle_fast that did not record its version"


def _read(cls: type[_File], data: Any, defaulted: list[str]) -> _File:
    """Section ``cls`` from the JSON object of a ``config.json`` (or :meth:`ConfigFile.to_dict`):
    its schema checked, the fields it lacks appended to ``defaulted``."""
    if not isinstance(data, Mapping):
        raise ValueError(f"config: must be a JSON object, got {type(data).__name__}")
    data = dict(data)
    schema, version = data.pop(SCHEMA_KEY, 1), data.pop(VERSION_KEY, None)
    if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
        raise ValueError(f"{SCHEMA_KEY} must be a positive integer, got {schema!r}")
    if schema > SCHEMA:
        raise ValueError(f"written by {_writer({VERSION_KEY: version})} with config schema {schema}, but this "
                         f"dalle_fast ({__version__}) reads schema {SCHEMA} and older: upgrade dalle_fast to use it")
    try:
        return _build(cls, data, "", defaulted)
    except ValueError as e:
        if version is not None and _newer(str(version), __version__):
            raise ValueError(f"{e} (written by dalle_fast {version}, newer than this {__version__}: upgrade "
                             "dalle_fast)") from None
        raise


def _newer(version: str, than: str) -> bool:
    """Whether release ``version`` is newer than ``than`` (dotted integers; other text compares as unknown)."""
    def parts(v: str) -> tuple[int, ...]:
        return tuple(int(p) if p.isdigit() else -1 for p in v.split("+")[0].split("."))
    return parts(version) > parts(than)


def _value(config: Any, key: str) -> Any:
    for name in key.split("."):
        config = getattr(config, name)
    return config


def _config_path(path: str | os.PathLike) -> Path:
    """A path ending in ``.json`` is the config file itself; any other path is a run directory."""
    path = Path(path)
    return path if path.suffix == ".json" else path / CONFIG_FILE


def _build(cls: type, data: Any, where: str, defaulted: list[str] | None = None) -> Any:
    """Construct section ``cls`` from a JSON object, recursing into nested sections; ``where`` is
    the key path of ``data`` (``""`` at the top, ``"vae."`` below). The key paths of fields that
    ``data`` lacks and that take their defaults are appended to ``defaulted``."""
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
    if defaulted is not None:
        defaulted += [f"{where}{name}" for name in fields if name not in data]
    hints = typing.get_type_hints(cls)
    kwargs = {name: _build(hints[name], value, f"{where}{name}.", defaulted) if dataclasses.is_dataclass(hints[name])
              else value for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ValueError(f"in {where.rstrip('.') or 'config'}: {e}") from None
