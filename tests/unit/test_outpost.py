"""The outpost's refresh, swap and last good copy (SPEC §11 "Swap", "Faults"), with a
scripted authentik and the real MemoryStore. The same runs against the test authentik
and real Redis in tests/e2e/test_outpost.py."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from ext_authz.adapters.memory_store import MemoryStore
from ext_authz.config import Application
from ext_authz.crypto import hmac_hex
from ext_authz.errors import AuthentikRefused, AuthentikUnavailable, ConfigError, StoreUnavailable
from ext_authz.metrics import Metrics
from ext_authz.outpost import (
    DEFAULT_INTERVAL,
    MIN_INTERVAL,
    Composer,
    Fetched,
    Outpost,
    merge_local,
)
from ext_authz.ports import Namespace
from tests.unit.conftest import app_config, apps

SECRET = b"unit-test-secret-0123456789abcdef-0123"


def provider(name: str) -> dict[str, Any]:
    return app_config(name, f"https://{name}.example.com", oidc=False)


class Authentik:
    """Scripted answers: a Fetched, or an exception to raise."""

    def __init__(self, *answers: Fetched | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    async def fetch(self) -> Fetched:
        self.calls += 1
        answer = self.answers[0] if len(self.answers) == 1 else self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Installed:
    def __init__(self) -> None:
        self.tables: list[tuple[list[str], dict[str, int], float]] = []

    def __call__(
        self, applications: Sequence[Application], sources: Mapping[str, int], fetched_at: float
    ) -> Any:
        self.tables.append(([a.name for a in applications], dict(sources), fetched_at))
        return None

    @property
    def names(self) -> list[str]:
        return self.tables[-1][0]


LOCAL = provider("local-only")


def compose(providers: Sequence[Mapping[str, Any]]) -> tuple[list[Application], list[str]]:
    """The YAML's own application beside the providers; a provider named `bad` is left
    out with a problem, as an invalid provider is."""
    good = [p for p in providers if p["name"] != "bad"]
    problems = [f"{p['name']}: invalid" for p in providers if p["name"] == "bad"]
    return list(apps(*good, LOCAL)), problems


def outpost(
    authentik: Authentik,
    installed: Installed,
    store: MemoryStore,
    *,
    metrics: Metrics | None = None,
    interval: float | None = None,
    sleep: Any = asyncio.sleep,
) -> Outpost:
    return Outpost(
        fetch=authentik.fetch,
        compose=compose,
        install=installed,
        store=store,
        secret=SECRET,
        host="https://authentik.example.com/",
        metrics=metrics or Metrics(CollectorRegistry()),
        interval=interval,
        clock=lambda: 1_000.0,
        sleep=sleep,
    )


def fetched(*names: str, interval: float | None = None) -> Fetched:
    return Fetched(tuple(provider(n) for n in names), refresh_interval=interval)


def test_a_refresh_installs_the_providers_beside_the_yaml_and_keeps_a_copy() -> None:
    async def scenario() -> None:
        store, installed = MemoryStore("t:"), Installed()
        registry = CollectorRegistry()
        op = outpost(Authentik(fetched("one", "two")), installed, store, metrics=Metrics(registry))
        assert op.readiness_problem() is not None
        assert await op.refresh()
        assert installed.names == ["one", "two", "local-only"]
        assert installed.tables[-1][1] == {"authentik": 2, "file": 1}
        assert op.readiness_problem() is None and op.state == "ok" and op.source == "authentik"
        assert registry.get_sample_value("ext_authz_applications", {"source": "authentik"}) == 2
        assert registry.get_sample_value("ext_authz_applications", {"source": "file"}) == 1
        assert registry.get_sample_value("ext_authz_table_built_timestamp_seconds") == 1_000.0
        stored = await store.get(Namespace.TABLE, store_keys(store)[0])
        assert stored is not None and b"one.example.com" not in stored  # sealed

    asyncio.run(scenario())


def store_keys(store: MemoryStore) -> list[str]:
    """The copy's key: keyed by the secret and authentik's host."""
    return [hmac_hex(SECRET, "table", "https://authentik.example.com/")]


def test_a_failed_refresh_keeps_the_table_and_logs_each_change_of_state_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        installed = Installed()
        authentik = Authentik(
            fetched("one"),
            AuthentikUnavailable("connect refused"),
            AuthentikUnavailable("connect refused"),
            AuthentikRefused("401"),
            fetched("one", "two"),
        )
        registry = CollectorRegistry()
        op = outpost(authentik, installed, MemoryStore("t:"), metrics=Metrics(registry))
        with caplog.at_level("INFO"):
            results = [await op.refresh() for _ in range(5)]
        assert results == [True, False, False, False, True]
        # Unchanged by the failures: one install per good refresh.
        assert [t[0] for t in installed.tables] == [
            ["one", "local-only"],
            ["one", "two", "local-only"],
        ]
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("authentik")]
        assert lines == [
            "authentik: applications refreshed",
            "authentik unavailable: keeping the current applications",
            "authentik refused: keeping the current applications",
            "authentik: applications refreshed",
        ]
        for outcome, count in (("ok", 2), ("unavailable", 2), ("refused", 1)):
            value = registry.get_sample_value(
                "ext_authz_table_refreshes_total", {"outcome": outcome}
            )
            assert value == count, outcome

    asyncio.run(scenario())


def test_a_start_while_authentik_is_down_serves_the_stored_copy() -> None:
    async def scenario() -> None:
        store = MemoryStore("t:")
        first = outpost(Authentik(fetched("one", "two")), Installed(), store)
        assert await first.refresh()

        installed = Installed()
        second = outpost(Authentik(AuthentikUnavailable("down")), installed, store)
        assert not await second.refresh()
        assert second.readiness_problem() is not None
        assert await second.restore()
        assert installed.names == ["one", "two", "local-only"]
        assert installed.tables[-1][1] == {"stored": 2, "file": 1}
        assert installed.tables[-1][2] == 1_000.0  # the copy's own fetch time: its age
        assert second.readiness_problem() is None and second.source == "stored"

    asyncio.run(scenario())


def test_a_stored_copy_sealed_under_another_secret_or_edited_is_not_used() -> None:
    async def scenario() -> None:
        store = MemoryStore("t:")
        assert await outpost(Authentik(fetched("one")), Installed(), store).refresh()
        (key,) = store_keys(store)
        blob = await store.get(Namespace.TABLE, key)
        assert blob is not None
        await store.set(Namespace.TABLE, key, blob[:-1] + bytes([blob[-1] ^ 1]), 60)
        installed = Installed()
        down = outpost(Authentik(AuthentikUnavailable("down")), installed, store)
        assert not await down.restore()
        assert installed.tables == [] and down.readiness_problem() is not None

        other = Outpost(
            fetch=Authentik(AuthentikUnavailable("down")).fetch,
            compose=compose,
            install=installed,
            store=store,
            secret=b"another-secret-0123456789abcdef-0123456",
            host="https://authentik.example.com/",
            metrics=Metrics(CollectorRegistry()),
        )
        assert not await other.restore()

    asyncio.run(scenario())


def test_no_copy_and_authentik_down_is_not_ready_and_recovers_without_a_restart() -> None:
    sleeps: list[float] = []
    release = asyncio.Event()

    async def scenario() -> None:
        installed = Installed()
        authentik = Authentik(*([AuthentikUnavailable("down")] * 6), fetched("one"))

        async def sleep(seconds: float) -> None:
            sleeps.append(seconds)
            if authentik.calls >= 7:
                release.set()
                await asyncio.Event().wait()

        op = outpost(authentik, installed, MemoryStore("t:"), sleep=sleep, interval=40)
        task = asyncio.ensure_future(op.run())
        await asyncio.wait_for(release.wait(), timeout=10)
        task.cancel()
        assert installed.names == ["one", "local-only"]
        assert op.readiness_problem() is None

    asyncio.run(scenario())
    # Back-off from 1 s, doubling, capped at the refresh interval; then the interval.
    assert sleeps == [1, 2, 4, 8, 16, 32, 40]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, DEFAULT_INTERVAL),
        (0, DEFAULT_INTERVAL),
        (-5, DEFAULT_INTERVAL),
        (10, MIN_INTERVAL),
        (120, 120),
    ],
)
def test_the_refresh_interval_is_the_outposts_clamped(given: float | None, expected: float) -> None:
    async def scenario() -> None:
        op = outpost(Authentik(fetched("one", interval=given)), Installed(), MemoryStore("t:"))
        await op.refresh()
        assert op.interval == expected

    asyncio.run(scenario())


def test_an_invalid_provider_is_left_out_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        installed = Installed()
        op = outpost(Authentik(fetched("one", "bad")), installed, MemoryStore("t:"))
        with caplog.at_level("WARNING"):
            await op.refresh()
            await op.refresh()
        assert installed.names == ["one", "local-only"]
        left_out = [
            r for r in caplog.records if r.getMessage() == "authentik: provider setting left out"
        ]
        assert [r.problem for r in left_out] == ["bad: invalid"]  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_a_store_that_is_down_does_not_fail_the_refresh() -> None:
    class Down(MemoryStore):
        async def set(self, namespace: str, key: str, value: bytes, ttl: float) -> None:
            raise StoreUnavailable("down")

    async def scenario() -> None:
        installed = Installed()
        assert await outpost(Authentik(fetched("one")), installed, Down("t:")).refresh()
        assert installed.names == ["one", "local-only"]

    asyncio.run(scenario())


# --- composing a table from the providers ---------------------------------------------


def test_local_settings_add_what_authentik_has_no_field_for() -> None:
    composer = Composer(
        apps(provider("yaml-app")),
        {"one": {"unauthenticated": "deny", "send": {"additional_headers": ["X-Team"]}}},
    )
    chosen, problems = composer([provider("one"), provider("two")])
    assert problems == []
    assert [a.name for a in chosen] == ["one", "two", "yaml-app"]
    assert chosen[0].unauthenticated == "deny"
    assert chosen[0].send.additional_headers == ("x-team",)  # names are lower-cased
    assert chosen[1].unauthenticated == "redirect"


def test_a_key_both_sources_set_is_refused_naming_it() -> None:
    mapping = {**provider("one"), "skip_path_regex": ["^/a"], "send": {"identity_headers": True}}
    with pytest.raises(ConfigError) as caught:
        merge_local(
            mapping,
            {"name": "one", "skip_path_regex": ["^/b"], "send": {"identity_headers": False}},
            "authentik provider one",
        )
    assert caught.value.errors == [
        "authentik provider one.skip_path_regex: set by the authentik provider; remove it "
        "from the YAML (one source of truth)",
        "authentik provider one.send.identity_headers: set by the authentik provider; remove "
        "it from the YAML (one source of truth)",
    ]
    # At a refresh the clashing provider is left out and the others stand.
    composer = Composer((), {"one": {"skip_path_regex": ["^/b"]}})
    chosen, problems = composer([{**provider("one"), "skip_path_regex": ["^/a"]}, provider("two")])
    assert [a.name for a in chosen] == ["two"]
    assert problems and problems[0].startswith("authentik provider one.skip_path_regex:")


def test_an_invalid_provider_or_a_taken_host_is_left_out_with_its_field() -> None:
    composer = Composer(apps(provider("yaml-app")), {})
    taken = {**provider("late"), "external_host": "https://one.example.com"}
    chosen, problems = composer(
        [
            provider("one"),
            {**provider("bad"), "external_host": "not a url"},
            taken,
            {**provider("dup"), "name": "yaml-app"},
        ]
    )
    assert [a.name for a in chosen] == ["one", "yaml-app"]
    assert problems[0].startswith("authentik provider bad.external_host:")
    assert problems[1] == (
        "authentik provider late.external_host: one.example.com port 443 is already served by one"
    )
    assert problems[2] == "authentik provider yaml-app.name: 'yaml-app' is already an application"


def test_an_unchanged_provider_keeps_its_application_object() -> None:
    composer = Composer((), {})
    first, _ = composer([provider("one"), provider("two")])
    second, _ = composer([provider("one"), {**provider("two"), "skip_path_regex": ["^/x"]}])
    assert second[0] is first[0]
    assert second[1] is not first[1] and second[1].skip_path_regex == ("^/x",)
