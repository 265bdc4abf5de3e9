"""Shipped proxy configs as templates: `${name}` placeholders, everything else verbatim.

nginx variables (`$host`), Caddy placeholders (`{http.request.uri}`, `{$ENV}`) and
Traefik rules all pass through untouched: only the braced form `${name}` with a
lower-case name is a placeholder, so the shipped files stay recognisable next to the
upstream documentation they copy. A placeholder without a value is an error (a typo
never renders as an empty port), and so is a value the template does not use.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from pathlib import Path


class BracedTemplate(string.Template):
    """string.Template that knows only `${name}`; `$name` and `$$` are left alone."""

    flags = re.NOFLAG  # case-sensitive: `${Host}` is not a placeholder
    # The four groups string.Template requires; only `braced` can ever match.
    pattern = r"""
    \$(?:
      (?P<escaped>(?!))
    | (?P<named>(?!))
    | \{(?P<braced>[a-z][a-z0-9_]*)\}
    | (?P<invalid>(?!))
    )
    """


def placeholders(text: str) -> set[str]:
    """The placeholder names a template uses."""
    return set(BracedTemplate(text).get_identifiers())


def render_text(text: str, values: Mapping[str, object], *, what: str = "template") -> str:
    """`text` with every `${name}` replaced; KeyError/ValueError name the mismatch."""
    used = placeholders(text)
    missing = sorted(used - values.keys())
    unused = sorted(values.keys() - used)
    if missing:
        raise KeyError(f"{what}: no value for placeholder(s) {', '.join(missing)}")
    if unused:
        raise ValueError(f"{what}: it has no placeholder(s) {', '.join(unused)}")
    return BracedTemplate(text).substitute({k: str(v) for k, v in values.items()})


def render_file(path: Path, values: Mapping[str, object]) -> str:
    return render_text(path.read_text(encoding="utf-8"), values, what=str(path))
