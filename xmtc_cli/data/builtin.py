"""Built-in corpora, processed data that needs no download; and `load_data`, which opens
whatever a recipe's `data.dir` names (a built-in corpus or a processed folder).

`builtin:demo` names the corpus the package generates itself, so that `xmtc train
recipes/demo.yaml` works on a fresh install with nothing downloaded. It is generated and
preprocessed once into the cache folder ($XMTC_CACHE, else ~/.cache/xmtc) and reused.
"""

from __future__ import annotations

import os
from pathlib import Path

from xmtc_cli import __version__
from xmtc_cli.data.preprocess import PreprocessOptions, preprocess
from xmtc_cli.data.processed import MANIFEST, ProcessedData, load_processed
from xmtc_cli.errors import ConfigError

PREFIX = "builtin:"
BUILTINS = ("demo",)
CACHE_ENV = "XMTC_CACHE"


def cache_dir() -> Path:
    """Where built-in corpora are kept: $XMTC_CACHE, else ~/.cache/xmtc."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "xmtc")


def load_builtin(location: str) -> ProcessedData:
    """Load the built-in corpus `builtin:NAME`, generating and preprocessing it the first time."""
    name = location[len(PREFIX):]
    if name not in BUILTINS:
        raise ConfigError(
            f"data.dir: unknown built-in corpus {location!r}",
            "built-in corpora: " + ", ".join(PREFIX + b for b in BUILTINS),
        )
    # Keyed by version: a newer xmtc may generate the corpus differently.
    out = cache_dir() / f"{name}-{__version__}"
    if not (out / MANIFEST).is_file():
        preprocess(name, PreprocessOptions(raw=out.with_name(out.name + "-raw"), out=out))
    return load_processed(out)


def load_data(location: str) -> ProcessedData:
    """The processed data a recipe's `data.dir` names: a folder, or `builtin:NAME`, which is
    generated and preprocessed on first use."""
    if location.startswith(PREFIX):
        return load_builtin(location)
    return load_processed(location)
