"""The application table: every application with what a Check needs of it (SPEC §11).

One immutable `AppTable` holds the applications of one moment: the host routing
(`core.routing.ApplicationIndex`, with forward_domain suffixes), each application's
runtime (its settings with their compiled regexes and cookie names, its OIDC client and
verifiers), the cookie names every upstream is kept from, and whether an identity's
directory credential is still current. The composition root (`app.py`) builds tables
off the hot path, from whatever source yields application settings (the YAML file,
authentik's API, the last good table in the store); a `TableHolder` hands the current
one out and replaces it as a whole.

The service reads `holder.current` once per Check and uses only that table for the
whole Check: a swap never shows a Check half of two tables, and a Check in flight
finishes on the table it started with (as Envoy's route tables are replaced). Nothing
may keep a piece of a table past a swap unless its key changes with the table: the
service's memo of an identity's upstream headers is keyed by the very `Application`
object it was computed for.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ext_authz.core import routing, steps

if TYPE_CHECKING:
    from ext_authz.core.model import AuthRequest, Identity
    from ext_authz.verification import AppRuntime

__all__ = ["AppTable", "TableHolder"]


def _always_current(identity: Identity) -> bool:
    return True


@dataclass(frozen=True, eq=False)
class AppTable:
    """Every application of one moment; never changed once built."""

    runtimes: Mapping[str, AppRuntime]
    index: routing.ApplicationIndex
    cookie_names: frozenset[str]
    # Whether the directory still holds the credential an identity was made from
    # (SPEC §5 "Sessions from header auth"): the directory is part of the table.
    current: Callable[[Identity], bool] = _always_current
    generation: int = 0
    # How many applications came from each source ("file", "authentik", "stored").
    sources: Mapping[str, int] = field(default_factory=dict)
    built_at: float = 0.0

    @classmethod
    def of(
        cls,
        runtimes: Iterable[AppRuntime],
        *,
        current: Callable[[Identity], bool] | None = None,
        generation: int = 0,
        sources: Mapping[str, int] | None = None,
        built_at: float = 0.0,
    ) -> AppTable:
        by_name = {rt.app.name: rt for rt in runtimes}
        apps = [rt.app for rt in by_name.values()]
        return cls(
            runtimes=by_name,
            index=routing.ApplicationIndex(apps),
            cookie_names=steps.cookie_names(apps),
            current=current or _always_current,
            generation=generation,
            sources=dict(sources) if sources is not None else {"file": len(apps)},
            built_at=built_at,
        )

    def select(self, request: AuthRequest) -> AppRuntime | None:
        """The runtime of the application the request is for (SPEC §4 step 2)."""
        app = self.index.select(request)
        return self.runtimes[app.name] if app is not None else None

    def __len__(self) -> int:
        return len(self.runtimes)


class TableHolder:
    """The current table, replaced at once by `swap` (one reference assignment)."""

    def __init__(self, table: AppTable) -> None:
        self.current = table
        self._listeners: list[Callable[[AppTable, AppTable], None]] = []

    def swap(self, table: AppTable) -> AppTable:
        """Make `table` current; return the one it replaced."""
        old, self.current = self.current, table
        for listener in self._listeners:
            listener(old, table)
        return old

    def on_swap(self, listener: Callable[[AppTable, AppTable], None]) -> None:
        """Call `listener(old, new)` after every swap (e.g. to drop what the old table
        made)."""
        self._listeners.append(listener)
