"""Reading one TOML file: the file named in every error, nothing else."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from danesync.errors import ConfigError


def read_toml_file(path: Path) -> dict[str, Any]:
    """The document in `path`; ConfigError names the file and what is wrong."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except OSError as error:
        raise ConfigError(str(path), [f"cannot read: {error.strerror}"]) from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(str(path), ["not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(str(path), [f"not valid TOML: {error}"]) from None
