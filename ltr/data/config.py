"""The one strict config base and the one YAML loader, with one-line, actionable errors.

An experiment should be a config diff, so every config section (labels, features, training, the run)
derives from `StrictConfig`: an unknown key, a wrong type or a missing file is rejected up front with the
dotted key and the fix, never silently ignored.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class StrictConfig(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigError(ValueError):
    """A config file is missing, unparsable or invalid. str() is one line naming the key and the fix."""


def _known_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    cur: Any = model
    for part in loc[:-1]:
        field = getattr(cur, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        cur = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if cur is None:
            return []
    return sorted(getattr(cur, "model_fields", {}).keys())


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> str:
    e = err.errors()[0]
    loc = tuple(p for p in e["loc"])
    key = ".".join(str(p) for p in loc) or "<root>"
    more = f" (and {len(err.errors()) - 1} more problem(s))" if len(err.errors()) > 1 else ""
    if not loc:  # a check across sections: its message already names the keys and the fix
        return f"{source}: {e['msg'].removeprefix('Value error, ')}{more}"
    if e["type"] == "extra_forbidden":
        known = _known_keys(model, loc)
        hint = f" Known keys here: {', '.join(known)}." if known else ""
        return f"{source}: unknown key '{key}'. Fix: remove it or correct its spelling.{hint}{more}"
    if e["type"] == "missing":
        return f"{source}: missing required key '{key}'. Fix: add it.{more}"
    got = e.get("input")
    got_s = f" (got {got!r})" if not isinstance(got, (dict, list)) else ""
    return f"{source}: key '{key}': {e['msg']}{got_s}. Fix: set '{key}' to a valid value.{more}"


def set_dotted(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
        if not isinstance(cur, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section. Fix: check the key path.")
    cur[parts[-1]] = value


def _config_text(p: Path) -> str:
    """The file's text, or one line saying why there is none: a directory, unreadable bytes, an OS error."""
    if not p.exists():
        raise ConfigError(f"config file {p} not found. Fix: pass an existing YAML file with --config "
                          "(e.g. configs/default.yaml), or omit --config for defaults.")
    if p.is_dir():
        raise ConfigError(f"config path {p} is a directory, not a YAML file. Fix: pass the file inside it, "
                          "e.g. --config configs/default.yaml.")
    try:
        raw = p.read_bytes()
    except OSError as ex:
        raise ConfigError(f"config file {p} cannot be read ({ex.strerror or ex}). Fix: check its permissions.") \
            from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as ex:
        line = raw[:ex.start].count(b"\n") + 1
        raise ConfigError(f"{p}: not UTF-8 text (byte 0x{raw[ex.start]:02x} on line {line}). Fix: save the "
                          "file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`).") from None


def _read_yaml(p: Path) -> dict[str, Any]:
    """A config file's top-level mapping. An empty file is refused rather than read as "all defaults":
    an empty file is far more often a failed write or the wrong path than a wish for defaults, and
    omitting --config already asks for defaults."""
    text = _config_text(p)
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as ex:
        mark = getattr(ex, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{where}. Fix: check indentation and quoting.") from None
    if loaded is None:
        raise ConfigError(f"{p}: the config file is empty (no keys). Fix: write at least one 'key: value' line, "
                          "or omit --config to run with the defaults.")
    if not isinstance(loaded, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys. Fix: write 'key: value' lines.")
    return loaded


def load_config(path: str | Path | None, model: type[M], overrides: dict[str, Any] | None = None) -> M:
    """Parse YAML at `path` (None: all defaults), apply dotted overrides, validate into `model`."""
    data: dict[str, Any] = {}
    source = str(path) if path else "<defaults>"
    if path is not None:
        data = _read_yaml(Path(path))
    for k, v in (overrides or {}).items():
        if v is not None:
            set_dotted(data, k, v)
    try:
        return model.model_validate(data)
    except ValidationError as ex:
        raise ConfigError(format_validation_error(ex, model, source)) from None
