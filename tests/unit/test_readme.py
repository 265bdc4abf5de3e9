"""The README's configuration reference and the config model agree, key for key."""

from __future__ import annotations

import re
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel

from ext_authz.config import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    """Every BaseModel inside an annotation (Optional, tuples, dict values...)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType) or origin is not None:
        for arg in get_args(annotation):
            if arg is not Ellipsis:
                yield from _models(arg)


def key_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        if field.exclude:
            continue  # derived by the loader, not a key of the file
        path = prefix + name
        yield path
        for inner in _models(field.annotation):
            yield from key_paths(inner, path + ".")


def documented_keys() -> set[str]:
    text = README.read_text()
    section = text.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_.]+)` \|", section, flags=re.MULTILINE))


def test_every_config_key_is_documented() -> None:
    model = set(key_paths(Settings))
    assert "applications.receive.basic.verify" in model  # the walker reaches nested models
    missing = sorted(model - documented_keys())
    assert not missing, f"README lacks: {missing}"


def test_no_documented_key_is_unknown_to_the_model() -> None:
    extra = sorted(documented_keys() - set(key_paths(Settings)))
    assert not extra, f"README documents keys the model does not have: {extra}"
