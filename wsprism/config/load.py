"""YAML text -> validated Config, with errors that name the offending key.

Steps: `yaml` safe-load (duplicate keys refused), `version` check, `msgspec.convert`
into the Structs of schema.py (strict: no str->int coercion, unknown keys fail), then
the cross-field checks of validate.py. msgspec's "... - at `$.tenants[1]`" messages are
rewritten to the "tenants[1].limitz: unknown key" form.
"""
import os
import re

import msgspec
import yaml

from .schema import Config
from .validate import ConfigError, check_version, validate

__all__ = ["load_config", "parse_config"]

DOC = "config"  # path used for errors about the document as a whole


def load_config(path: str | os.PathLike) -> Config:
    """Read, parse and validate a config file. Raises ConfigError."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(os.fspath(path), f"cannot read file ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise ConfigError(os.fspath(path), "file is not valid UTF-8") from None
    return parse_config(text)


def parse_config(text: str) -> Config:
    """Parse and validate config text (YAML). Raises ConfigError."""
    raw = _load_yaml(text)
    if raw is None:
        raise ConfigError(DOC, "the file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(DOC, f"the top level must be a mapping, got {_yaml_type(raw)}")
    check_version(raw)
    try:
        cfg = msgspec.convert(raw, Config, strict=True)
    except msgspec.ValidationError as e:
        raise _translate(str(e), raw) from None
    return validate(cfg)


# --- YAML ----------------------------------------------------------------------------


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """Safe loader that refuses a key given twice in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:  # the key is not named: it may be a static ticket
                mark = key_node.start_mark
                raise ConfigError(DOC, f"duplicate key at line {mark.line + 1}, column {mark.column + 1}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _load_yaml(text: str):
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        problem = e.problem or e.context or "invalid YAML"
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(DOC, f"invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as e:  # e.g. a control character in the text
        raise ConfigError(DOC, f"invalid YAML: {e}") from None


def _yaml_type(value) -> str:
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


# --- msgspec errors ------------------------------------------------------------------

_AT_RE = re.compile(r"(?P<msg>.*?)(?: - at (?:`(?P<key>key)` in )?`\$(?P<where>[^`]*)`)?", re.S)
_SEGMENT_RE = re.compile(r"\.(\w+)|\[(\d+)\]|\[(\.\.\.)\]")
_TYPE_WORDS = {"object": "mapping", "array": "list", "|": "or"}


def _translate(message: str, raw: dict) -> ConfigError:
    """Turn one msgspec ValidationError message into a ConfigError with a readable path."""
    m = _AT_RE.fullmatch(message)
    msg, where = m["msg"], m["where"] or ""
    path, value, info = _walk(where, raw)
    if found := re.fullmatch(r"Object contains unknown field `(.+)`", msg):
        return ConfigError(_join(path, found[1]), "unknown key")
    if found := re.fullmatch(r"Object missing required field `(.+)`", msg):
        return ConfigError(_join(path, found[1]), "required key missing")
    path = path or DOC
    if m["key"]:
        return ConfigError(path, "keys must be strings")
    if found := re.fullmatch(r"Invalid enum value (.+)", msg):
        allowed = ", ".join(str(v) for v in getattr(info, "values", ()))
        return ConfigError(path, f"invalid value {found[1]}" + (f" (expected one of: {allowed})" if allowed else ""))
    if re.fullmatch(r"Expected `str` of length >= 1", msg):
        return ConfigError(path, "must not be empty")
    if found := re.fullmatch(r"Expected `(\w+)` ([<>]=?) (\S+)", msg):
        bound = re.sub(r"\.0$", "", found[3])
        got = f", got {value}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
        return ConfigError(path, f"must be {found[2]} {bound}{got}")
    if found := re.fullmatch(r"Expected `(.+)`, got `(.+)`", msg):
        reason = f"expected {_words(found[1])}, got {_words(found[2])}"
        if found[2] == "null" and found[1] == "object":
            reason += " (an empty section: add keys under it or remove it)"
        elif found[2] == "int" and re.search(r"hot_allowlist\[\d+\]$", path):
            reason += ' (quote entries like "2:10": unquoted, YAML reads them as base-60 numbers)'
        return ConfigError(path, reason)
    return ConfigError(path, msg[:1].lower() + msg[1:])


def _walk(where: str, raw: dict):
    """Follow a msgspec path ("$.a[0].b[...]") through the raw data and the schema.

    Returns (display path, raw value there or None, msgspec type info there).
    A `[...]` (a dict value) is replaced by its key, found as the first entry whose
    value fails to convert on its own. Dicts of plain strings (static tickets, whose
    keys are secrets) are never resolved: the path stops at the dict.
    """
    info = msgspec.inspect.type_info(Config)
    value = raw
    parts: list[str] = []
    for name, index, dict_value in _SEGMENT_RE.findall(where):
        info = _unwrap(info)
        if name:
            info = next((f.type for f in getattr(info, "fields", ()) if f.name == name), None)
            value = value.get(name) if isinstance(value, dict) else None
            parts.append(f".{name}")
        elif index:
            info = getattr(info, "item_type", None)
            value = value[int(index)] if isinstance(value, list) and int(index) < len(value) else None
            parts.append(f"[{index}]")
        elif dict_value:
            item = _unwrap(getattr(info, "value_type", None))
            key = _failing_key(value, item)
            if key is None:
                return "".join(parts).lstrip("."), None, None
            info, value = item, value[key]
            parts.append(f".{key}")
    return "".join(parts).lstrip("."), value, _unwrap(info)


def _failing_key(mapping, item_info):
    if not isinstance(mapping, dict) or not isinstance(item_info, msgspec.inspect.StructType):
        return None
    for key, item in mapping.items():
        try:
            msgspec.convert(item, item_info.cls, strict=True)
        except msgspec.ValidationError:
            return key
    return None


def _unwrap(info):
    """Strip Annotated metadata and the `None` of an optional type."""
    while True:
        if isinstance(info, msgspec.inspect.Metadata):
            info = info.type
        elif isinstance(info, msgspec.inspect.UnionType):
            rest = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
            if len(rest) != 1:
                return info
            info = rest[0]
        else:
            return info


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _words(type_text: str) -> str:
    return " ".join(_TYPE_WORDS.get(w, w) for w in type_text.split())
