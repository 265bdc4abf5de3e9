"""The live application table (SPEC §11 "Swap", "Modes"): routing by domain, skip paths
on the whole URL, and a swap that never serves a piece of the old table."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from ext_authz.adapters.memory_store import MemoryStore
from ext_authz.app import TableBuilder, build
from ext_authz.config import parse_settings
from ext_authz.core.decision import Allow, Deny
from ext_authz.core.model import AuthRequest, Identity, Verified
from ext_authz.core.routing import ApplicationIndex
from ext_authz.errors import ConfigError
from ext_authz.hash_pool import HashPool
from ext_authz.metrics import Metrics
from ext_authz.service import AppRuntime, CheckService
from ext_authz.sessions import CredentialCache, LoginStateRepository, SessionRepository
from ext_authz.table import AppTable, TableHolder
from ext_authz.throttle import Throttle
from tests.unit.conftest import SECRET as CONF_SECRET
from tests.unit.conftest import app_config, apps

SECRET = b"unit-test-secret-0123456789abcdef-0123"

DOMAIN_APPS = apps(
    app_config(
        "wide", "https://auth.example.com", mode="forward_domain", cookie_domain="example.com"
    ),
    app_config(
        "team",
        "https://auth.team.example.com",
        mode="forward_domain",
        cookie_domain=".team.example.com",
    ),
    app_config("exact", "https://exact.team.example.com"),
)


def req(host: str, path: str = "/", query: str = "", **headers: str) -> AuthRequest:
    return AuthRequest(
        has_http=True,
        method="GET",
        host=host,
        path=path,
        query=query,
        scheme="https",
        headers={"accept": "text/html", **headers},
        request_id="rid",
    )


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        pytest.param("app.example.com", "wide", id="inside-domain"),
        pytest.param("a.b.example.com:8443", "wide", id="deeper-with-port"),
        pytest.param("example.com", "wide", id="the-domain-itself"),
        pytest.param("x.team.example.com", "team", id="longest-domain-wins"),
        pytest.param("exact.team.example.com", "exact", id="exact-host-beats-domain"),
        pytest.param("EXAMPLE.com", "wide", id="case"),
        pytest.param("badexample.com", None, id="dot-boundary"),
        pytest.param("example.com.evil.net", None, id="suffix-elsewhere"),
        pytest.param("", None, id="no-host"),
    ],
)
def test_forward_domain_matches_every_host_inside_its_cookie_domain(
    host: str, expected: str | None
) -> None:
    app = ApplicationIndex(DOMAIN_APPS).select(req(host))
    assert (app.name if app is not None else None) == expected


def test_forward_domain_needs_a_cookie_domain() -> None:
    data = {
        "secret": CONF_SECRET,
        "directory": {},
        "applications": [app_config("wide", "https://auth.example.com", mode="forward_domain")],
    }
    with pytest.raises(ConfigError, match=r"applications\[0\]\.cookie_domain"):
        parse_settings(data, environ={})


# --- the service over a table --------------------------------------------------------


def _verified(identity: Identity) -> Any:
    async def verify(username: str, password: str) -> Verified:
        return Verified(identity)

    return verify


def _service(holder: TableHolder) -> CheckService:
    store = MemoryStore("t:")
    metrics = Metrics(CollectorRegistry())
    return CheckService(
        holder,
        sessions=SessionRepository(store, secret=SECRET, local_ttl=0),
        credentials=CredentialCache(store, secret=SECRET, local_ttl=5),
        logins=LoginStateRepository(store, secret=SECRET),
        metrics=metrics,
        throttle=Throttle(store, secret=SECRET, metrics=metrics),
    )


def _table(*configs: dict[str, Any], verify: Any, generation: int = 1) -> AppTable:
    return AppTable.of(
        [
            AppRuntime(app=app, verify_basic=verify, verify_bearer=None, oidc=None)
            for app in apps(*configs)
        ],
        generation=generation,
    )


BOB = Identity(
    sub="bob",
    preferred_username="bob",
    email="bob@example.com",
    attributes={"upstream_user": "robert", "upstream_password": "pw-upstream"},
)
BASIC = "Basic " + base64.b64encode(b"bob:app-password").decode()


def _plain(name: str = "app", **settings: Any) -> dict[str, Any]:
    return app_config(
        name,
        f"https://{name}.example.com",
        oidc=False,
        receive={"create_session": False},
        **settings,
    )


def _upstream(answer: Allow | Deny) -> dict[str, str]:
    assert isinstance(answer, Allow), answer
    return {k.lower(): v for k, v in answer.set_headers}


def test_a_swap_changes_the_answer_of_a_cached_credential_at_once() -> None:
    """The identity's upstream headers are memoised per cache entry; after a swap that
    switches on upstream Basic, the very next Check (from memory and awaited) sends it."""
    verify = _verified(BOB)
    holder = TableHolder(_table(_plain(), verify=verify))
    svc = _service(holder)

    async def scenario() -> None:
        first = await svc.check(req("app.example.com", authorization=BASIC))
        assert "authorization" not in _upstream(first)
        again = svc.check_now(req("app.example.com", authorization=BASIC))
        assert again is not None and "authorization" not in _upstream(again)

        basic = {
            "basic": {
                "enabled": True,
                "username_attribute": "upstream_user",
                "password_attribute": "upstream_password",
            }
        }
        holder.swap(_table(_plain(send=basic), verify=verify, generation=2))
        expected = "Basic " + base64.b64encode(b"robert:pw-upstream").decode()
        now = svc.check_now(req("app.example.com", authorization=BASIC))
        assert now is not None and _upstream(now)["authorization"] == expected
        awaited = await svc.check(req("app.example.com", authorization=BASIC))
        assert _upstream(awaited)["authorization"] == expected

    asyncio.run(scenario())


def test_a_removed_application_answers_unknown_host_from_the_next_check() -> None:
    verify = _verified(BOB)
    holder = TableHolder(_table(_plain("one"), _plain("two"), verify=verify))
    svc = _service(holder)

    async def scenario() -> None:
        assert isinstance(await svc.check(req("two.example.com", authorization=BASIC)), Allow)
        holder.swap(_table(_plain("one"), verify=verify, generation=2))
        for answer in (
            svc.check_now(req("two.example.com", authorization=BASIC)),
            await svc.check(req("two.example.com", authorization=BASIC)),
        ):
            assert isinstance(answer, Deny) and answer.status == 403
            assert answer.reason == "unknown_host"
        assert isinstance(await svc.check(req("one.example.com", authorization=BASIC)), Allow)

    asyncio.run(scenario())


def test_a_check_in_flight_finishes_on_the_table_it_started_with() -> None:
    """A verification waiting while the table is swapped answers with the old
    application's settings: no Check sees half of two tables."""
    release = asyncio.Event()
    started = asyncio.Event()

    async def slow(username: str, password: str) -> Verified:
        started.set()
        await release.wait()
        return Verified(BOB)

    holder = TableHolder(_table(_plain(send={"identity_headers": True}), verify=slow))
    svc = _service(holder)

    async def scenario() -> None:
        pending = asyncio.ensure_future(svc.check(req("app.example.com", authorization=BASIC)))
        await started.wait()
        holder.swap(_table(_plain(send={"identity_headers": False}), verify=slow, generation=2))
        release.set()
        old = _upstream(await pending)
        assert old["x-authentik-username"] == "bob"
        new = _upstream(await svc.check(req("app.example.com", authorization=BASIC)))
        assert "x-authentik-username" not in new

    asyncio.run(scenario())


def test_skip_paths_of_a_forward_domain_application_see_the_whole_url() -> None:
    verify = _verified(BOB)
    config = app_config(
        "wide",
        "https://auth.example.com",
        oidc=False,
        mode="forward_domain",
        cookie_domain="example.com",
        skip_path_regex=[r"^https://public\.example\.com/", r"/health\?probe=1$"],
    )
    svc = _service(TableHolder(_table(config, verify=verify)))

    async def scenario() -> None:
        skipped = await svc.check(req("public.example.com", "/anything"))
        assert isinstance(skipped, Allow) and skipped.method == "skip"
        probe = await svc.check(req("app.example.com", "/health", "probe=1"))
        assert isinstance(probe, Allow) and probe.method == "skip"
        # The path alone no longer matches an anchored URL regex: authentication needed.
        closed = await svc.check(req("private.example.com", "/anything"))
        assert isinstance(closed, Deny) and closed.status == 401
        # Normalised first: a dot segment cannot walk out of the skipped prefix.
        walked = await svc.check(req("private.example.com", "/x/../health", "probe=1"))
        assert isinstance(walked, Allow) and walked.method == "skip"

    asyncio.run(scenario())


# --- building tables ------------------------------------------------------------------


def test_the_builder_reuses_an_oidc_client_whose_settings_did_not_change() -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            pool = HashPool()
            try:
                builder = TableBuilder(
                    http, Metrics(CollectorRegistry()), secret=SECRET, hash_pool=pool
                )
                first = builder.build(apps(app_config("a"), app_config("b", "https://b.x")), None)
                changed = app_config("b", "https://b.x")
                changed["oidc"] = {**changed["oidc"], "client_id": "other-client"}
                second = builder.build(apps(app_config("a"), changed), None)
                assert second.generation == first.generation + 1
                assert second.runtimes["a"].oidc is first.runtimes["a"].oidc
                assert second.runtimes["b"].oidc is not first.runtimes["b"].oidc
                assert second.runtimes["b"].app.cookie_name != first.runtimes["b"].app.cookie_name
            finally:
                pool.close()

    asyncio.run(scenario())


def test_reload_swaps_a_table_built_from_the_new_settings(caplog: pytest.LogCaptureFixture) -> None:
    base = {"secret": CONF_SECRET, "directory": {}, "applications": [_plain("one")]}
    settings = parse_settings(base, environ={})
    components = build(settings, Metrics(CollectorRegistry()))

    async def scenario() -> None:
        try:
            before = components.tables.current
            assert set(before.runtimes) == {"one"}
            more = {**base, "applications": [_plain("one"), _plain("two")]}
            more["server"] = {"grace_period": "3s"}
            with caplog.at_level("INFO"):
                after = components.reload(parse_settings(more, environ={}))
            assert components.tables.current is after
            assert set(after.runtimes) == {"one", "two"}
            assert after.generation == before.generation + 1
            restart = [r for r in caplog.records if r.getMessage() == "reload: restart to apply"]
            assert [r.keys for r in restart] == [["server"]]  # type: ignore[attr-defined]
        finally:
            await components.close()

    asyncio.run(scenario())


def test_the_builder_reuses_the_runtime_of_an_unchanged_application() -> None:
    """A refresh that hands back the same Application objects rebuilds nothing of them;
    a changed directory rebuilds every runtime (their verifiers hold it)."""

    async def scenario() -> None:
        async with httpx.AsyncClient() as http:
            pool = HashPool()
            try:
                builder = TableBuilder(
                    http, Metrics(CollectorRegistry()), secret=SECRET, hash_pool=pool
                )
                one, two = apps(app_config("a"), app_config("b", "https://b.x"))
                directory = parse_settings(
                    {"secret": CONF_SECRET, "directory": {}, "applications": [_plain()]},
                    environ={},
                ).directory
                first = builder.build([one, two], directory)
                (changed,) = apps(app_config("b", "https://b.x", skip_path_regex=["^/x"]))
                second = builder.build([one, changed], directory)
                assert second.runtimes["a"] is first.runtimes["a"]
                assert second.runtimes["b"] is not first.runtimes["b"]
                assert second.runtimes["b"].oidc is first.runtimes["b"].oidc  # same oidc
                other = parse_settings(
                    {
                        "secret": CONF_SECRET,
                        "directory": {"users": [{"username": "zed"}]},
                        "applications": [_plain()],
                    },
                    environ={},
                ).directory
                third = builder.build([one, changed], other)
                assert third.runtimes["a"] is not second.runtimes["a"]
                # The identity check is the new directory's (a bound method of it).
                assert third.current.__self__ is not second.current.__self__  # type: ignore[attr-defined]
                assert second.current.__self__ is first.current.__self__  # type: ignore[attr-defined]
            finally:
                pool.close()

    asyncio.run(scenario())
