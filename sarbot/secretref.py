"""Secrets are referenced from the config file, never written into it.

A secret setting takes ``{ env = "NAME" }`` (read from an environment variable)
or ``{ file = "PATH" }`` (read from a file, relative to the config file's folder,
trailing newline removed).  Plain strings are refused so that examples and
committed configs can never carry a password.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, SecretStr, ValidationInfo

REF_HINT = 'use { env = "NAME" } or { file = "PATH" }'


def base_dir(info: ValidationInfo) -> Path:
    """The folder that relative paths in the config are resolved against."""
    context = info.context or {}
    return Path(context.get("base_dir", "."))


def resolve_path(value: Any, info: ValidationInfo) -> Any:
    """Resolve a relative path setting against the config file's folder."""
    if isinstance(value, str | Path):
        path = Path(value).expanduser()
        return path if path.is_absolute() else base_dir(info) / path
    return value


def _read_ref(ref: Mapping[str, Any], info: ValidationInfo) -> str:
    keys = set(ref)
    if keys == {"env"}:
        name = ref["env"]
        if not isinstance(name, str) or not name:
            raise ValueError("env must name an environment variable")
        value = os.environ.get(name)
        if value is None:
            raise ValueError(f"environment variable {name} is not set")
        return value
    if keys == {"file"}:
        path = resolve_path(ref["file"], info)
        try:
            return Path(path).read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    raise ValueError(f"a secret reference has exactly one key: {REF_HINT}")


def _secret_only(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, SecretStr):
        return value
    if isinstance(value, Mapping):
        return SecretStr(_read_ref(value, info))
    raise ValueError(f"secrets are not written inline; {REF_HINT}")


def _plain_or_ref(value: Any, info: ValidationInfo) -> Any:
    if isinstance(value, Mapping):
        return _read_ref(value, info)
    return value


Secret = Annotated[SecretStr, BeforeValidator(_secret_only)]
"""A setting that must be given as a reference and is kept masked."""

MaybeSecretStr = Annotated[str, BeforeValidator(_plain_or_ref)]
"""A plain setting that may hold a secret part (a database URL with a password)."""

ConfigPath = Annotated[Path, BeforeValidator(resolve_path)]
"""A path setting, relative to the config file's folder."""
