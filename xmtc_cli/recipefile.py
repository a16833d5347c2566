"""Reading recipes safely: untrusted YAML text into a typed, frozen configuration.

`xmtc_cli.config` declares the recipe's keys and their checks; this module is how a file and
KEY=VALUE overrides become one. It refuses what a hostile or mistaken file could use to hurt
(size, aliases, deep nesting, huge integers, NUL characters) and reports every problem at once,
with a "did you mean" for unknown keys, quoting no value at more than a short prefix.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from xmtc_cli.errors import ConfigError, cut, short

T = TypeVar("T")

MAX_RECIPE_BYTES = 1_000_000
"""A recipe is a few hundred bytes; a larger file is refused before it is parsed."""
MAX_NESTING = 32
"""YAML nesting deeper than this is refused (a recipe is two levels deep)."""
MAX_INT = 2**31 - 1
"""The largest integer any recipe field takes (sizes, counts and steps end up in C ints)."""



def read_recipe_file(path: str | Path) -> dict:
    """The plain data of the YAML recipe at `path`: a mapping (empty for an empty file).

    A recipe file is untrusted data: it is read only up to MAX_RECIPE_BYTES, YAML aliases and
    nesting deeper than MAX_NESTING are refused (so a few hundred bytes cannot expand to
    gigabytes or exhaust the stack), and no error message quotes more than a short prefix of a
    value.
    """
    path = Path(path)
    raw = _parse_yaml(_read_recipe_text(path), str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of sections, found {type(raw).__name__}",
                          "start from a shipped recipe, e.g. recipes/demo.yaml")
    return raw


def _read_recipe_text(path: Path) -> str:
    example = "pass a YAML recipe, e.g. recipes/demo.yaml (see `ls recipes/`)"
    try:  # pathlib's checks raise for a name too long, a permission on the way, ...
        if path.is_dir():
            raise ConfigError(f"recipe {path} is a folder, not a file", example)
        if not path.exists():
            problem = "is a broken link" if path.is_symlink() else "does not exist"
            raise ConfigError(f"recipe {path} {problem}", example)
        if not path.is_file():
            raise ConfigError(f"recipe {path} is not a regular file", example)
        with open(path, "rb") as f:
            data = f.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"recipe {path} cannot be read: {exc.strerror or exc}",
                          "check the path and the file's permissions") from exc
    if len(data) > MAX_RECIPE_BYTES:
        raise ConfigError(f"recipe {path} is larger than {MAX_RECIPE_BYTES:,} bytes",
                          "a recipe is a short YAML file; check that this is the right file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start + 1})",
                          "save the recipe as UTF-8") from exc


class _Refused(yaml.YAMLError):
    """A YAML construct that recipes do not accept, at a place in the text."""

    def __init__(self, problem: str, mark: Any):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader without aliases and with bounded nesting.

    An alias (`*name`) is refused where it is read: nested aliases are how a few hundred bytes
    of YAML expand to billions of values ("billion laughs"), and recipes never need them. The
    composer recurses once per level, so deep nesting is refused long before the stack ends.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise _Refused("YAML aliases (*name) are not allowed in recipes",
                           self.peek_event().start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_NESTING:
                raise _Refused(f"nested deeper than {MAX_NESTING} levels",
                               self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _parse_yaml(text: str, where: str, lines: bool = True) -> Any:
    """`text` as plain data; ConfigError naming `where` (and the line, with `lines`) if it is
    not a value we accept."""
    loader = None
    try:
        loader = _RecipeLoader(text)  # reads (and checks) the first characters already
        return loader.get_single_data()
    except _Refused as exc:
        line = f":{exc.problem_mark.line + 1}" if lines and exc.problem_mark else ""
        raise ConfigError(f"{where}{line}: {exc.problem}",
                          "write the values out: recipes take no anchors, aliases or deep "
                          "nesting") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if lines and mark else ""
        problem = (getattr(exc, "problem", None) or getattr(exc, "reason", None)
                   or type(exc).__name__)
        raise ConfigError(f"{where}{line}: not valid YAML ({cut(str(problem))})",
                          "check the YAML syntax" + (" at that line" if line else "")) from None
    except (ValueError, OverflowError, RecursionError) as exc:  # e.g. a 5000-digit integer
        raise ConfigError(f"{where}: a value cannot be read ({cut(str(exc), 80)})",
                          "check the numbers in it") from None
    finally:
        if loader is not None:
            loader.dispose()


def build(cls: type[T], raw: dict, overrides: Sequence[str], source: str,
          check: Callable[[T], list[str]]) -> T:
    """The frozen dataclass `cls` from nested plain data plus `KEY=VALUE` overrides, then
    `check`ed; ConfigError listing every problem at once."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: a recipe is a mapping of sections, found "
                          f"{type(raw).__name__}", "pass a recipe written by xmtc")
    raw = _deep_copy(raw, source)
    problems: list[str] = []
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            problems.append(f"override {short(item)} is not KEY=VALUE (e.g. train.epochs=3)")
            continue
        node = raw
        *parents, leaf = key.strip().split(".")
        for depth, part in enumerate(parents):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                section = ".".join(parents[: depth + 1])
                problems.append(f"override {short(item)}: {cut(section)} is not a section")
                break
            node = child
        else:
            try:
                node[leaf] = (_parse_yaml(text, f"override {short(item)}", lines=False)
                              if text.strip() else None)
            except ConfigError as exc:
                problems.append(exc.message)
    built = _build(cls, raw, "", problems)
    if not problems:
        problems.extend(check(built))
    if problems:
        lines = "\n  ".join(problems)
        raise ConfigError(
            f"{source}: {len(problems)} problem{'s' if len(problems) > 1 else ''}:\n  {lines}",
            "fix the recipe or the override; `xmtc train RECIPE --dry-run` shows the result",
        )
    return built


def _deep_copy(value: Any, source: str, depth: int = 0) -> Any:
    if isinstance(value, dict):
        if depth >= MAX_NESTING:
            raise ConfigError(f"{source}: nested deeper than {MAX_NESTING} levels",
                              "a recipe has four sections of plain values")
        return {k: _deep_copy(v, source, depth + 1) for k, v in value.items()}
    return value


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    if not isinstance(raw, dict):
        problems.append(f"{prefix.rstrip('.') or 'recipe'} must be a mapping")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        name = key if isinstance(key, str) else short(key)
        if name not in fields:
            close = difflib.get_close_matches(name[:100], fields, n=1)
            tip = f" (did you mean {prefix}{close[0]}?)" if close else ""
            known = ", ".join(prefix + f for f in fields)
            problems.append(f"unknown key {prefix}{cut(name)}{tip}; known here: {known}")
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            section = value if value is not None else {}
            kwargs[name] = _build(hint, section, f"{prefix}{name}.", problems)
        else:
            ok, converted = _coerce(value, hint)
            if not ok:
                problems.append(f"{prefix}{name}: {short(value)} is not {_describe(hint)}")
            elif not _finite(converted):
                problems.append(f"{prefix}{name}: {short(converted)} is not a finite number")
            elif _too_large(converted):
                problems.append(f"{prefix}{name}: {short(value)} is larger than {MAX_INT}")
            elif isinstance(converted, str) and "\0" in converted:
                problems.append(f"{prefix}{name}: {short(value)} contains a NUL character")
            else:
                kwargs[name] = converted
    return cls(**kwargs)


def _coerce(value: Any, hint: Any) -> tuple[bool, Any]:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, None
    if hint is type(None):
        return value is None, None
    if origin is Literal:
        return (value in args), value
    if origin is tuple:
        if isinstance(value, (list, tuple)) and all(_coerce(v, args[0])[0] for v in value):
            return True, tuple(_coerce(v, args[0])[1] for v in value)
        return False, None
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return (isinstance(value, int) and not isinstance(value, bool)), value
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return True, float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` as a string
            try:
                return True, float(value)
            except ValueError:
                return False, None
        return False, None
    if hint is str:
        return isinstance(value, str), value
    return False, None


def _finite(value: Any) -> bool:
    """False for NaN and infinities (which every range check lets through: nan <= 0 is False)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, tuple):
        return all(_finite(v) for v in value)
    return True


def _too_large(value: Any) -> bool:
    if isinstance(value, int) and not isinstance(value, bool):
        return abs(value) > MAX_INT
    if isinstance(value, tuple):
        return any(_too_large(v) for v in value)
    return False


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if hint is type(None):
        return "null"
    if origin is Literal:
        return "one of " + " | ".join(str(a) for a in args)
    if origin is tuple:
        return f"a list of {_describe(args[0])}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        hint, str(hint)
    )
