"""DirectoryVerifier: argon2id app passwords and static tokens of the config's directory,
the cost of a guess (SPEC §5), and the credential references sessions keep."""

from __future__ import annotations

import asyncio
import threading

import pytest
from argon2 import PasswordHasher

from ext_authz.adapters import directory as directory_module
from ext_authz.adapters.directory import DirectoryVerifier
from ext_authz.config import Directory
from ext_authz.core.model import Identity, Rejected, Unavailable, Verified
from ext_authz.crypto import hash_token
from ext_authz.hash_pool import HashPool

pytestmark = pytest.mark.anyio

# Cheap parameters keep the tests fast; the verifier reads the parameters from each hash.
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
SECRET = b"unit-test-secret-0123456789abcdef-0123"


def _token(token: str) -> str:
    return hash_token(SECRET, token, FAST)


def _directory() -> Directory:
    return Directory.model_validate(
        {
            "groups": {
                "admins": {"attributes": {"app_username": "admin", "role": "admin"}},
                "billing": {"attributes": {"role": "billing", "team": "money"}},
            },
            "users": [
                {
                    "username": "alice",
                    "email": "alice@example.com",
                    "name": "Alice Example",
                    "groups": ["billing", "admins"],
                    "attributes": {"app_password": "s3cret", "team": "alice's"},
                    "app_passwords": [FAST.hash("old-pw"), FAST.hash("alice-pw")],
                    "tokens": [_token("alice-token")],
                },
                {
                    "username": "bob",
                    "app_passwords": [FAST.hash("bob-pw")],
                    "tokens": [_token("bob-token-1"), _token("bob-token-2")],
                },
                {"username": "carol"},
            ],
        }
    )


@pytest.fixture(scope="module")
def verifier() -> DirectoryVerifier:
    return DirectoryVerifier(_directory(), secret=SECRET)


@pytest.mark.parametrize("password", ["alice-pw", "old-pw"])
async def test_password_verified(verifier: DirectoryVerifier, password: str) -> None:
    outcome = await verifier.verify_password("alice", password)
    assert isinstance(outcome, Verified) and outcome.ttl is None
    identity = outcome.identity
    assert identity.sub == "alice" and identity.preferred_username == "alice"
    assert identity.email == "alice@example.com" and identity.name == "Alice Example"
    assert identity.groups == ("billing", "admins")  # config order
    # groups in name order (admins, then billing), then the user's own on top
    assert dict(identity.attributes) == {
        "app_username": "admin",
        "role": "billing",
        "team": "alice's",
        "app_password": "s3cret",
    }
    assert identity.token == "" and identity.provider == "directory"


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("alice", "wrong"),
        ("alice", "bob-pw"),  # another user's password
        ("alice", ""),
        ("Alice", "alice-pw"),  # usernames are exact
        ("nobody", "alice-pw"),
        ("carol", "anything"),  # a user without app passwords
    ],
)
async def test_password_rejected(verifier: DirectoryVerifier, username: str, password: str) -> None:
    outcome = await verifier.verify_password(username, password)
    assert outcome == Rejected("invalid credentials")


async def test_unknown_user_still_spends_an_argon2_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = DirectoryVerifier(_directory(), secret=SECRET)
    calls: list[str] = []
    original = verifier._verify

    def spy(hashed: str, secret: str) -> bool:
        calls.append(hashed)
        return original(hashed, secret)

    monkeypatch.setattr(verifier, "_verify", spy)
    await verifier.verify_password("nobody", "pw")
    assert len(calls) == 1 and calls[0].startswith("$argon2id$")
    # The dummy uses the configured hashes' parameters, so it costs the same.
    assert "m=1024,t=1,p=1" in calls[0]
    calls.clear()
    await verifier.verify_password("alice", "wrong")
    assert len(calls) == 2  # every hash of the user, not stopping early


async def test_argon2_runs_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = DirectoryVerifier(_directory(), secret=SECRET)
    threads: list[int] = []
    original = verifier._verify

    def spy(hashed: str, secret: str) -> bool:
        threads.append(threading.get_ident())
        return original(hashed, secret)

    monkeypatch.setattr(verifier, "_verify", spy)
    loop_thread = threading.get_ident()
    await verifier.verify_password("alice", "alice-pw")
    await verifier.verify_token("bob-token-2")
    assert threads and loop_thread not in threads


@pytest.mark.parametrize(("token", "user"), [("alice-token", "alice"), ("bob-token-2", "bob")])
async def test_token_verified(verifier: DirectoryVerifier, token: str, user: str) -> None:
    outcome = await verifier.verify_token(token)
    assert isinstance(outcome, Verified) and outcome.ttl is None
    assert outcome.identity.sub == user
    assert outcome.identity.token == ""  # a static token is not passed on as X-authentik-jwt


@pytest.mark.parametrize("token", ["", "alice-pw", "bob-token-3", "x" * 1000])
async def test_token_rejected(verifier: DirectoryVerifier, token: str) -> None:
    assert await verifier.verify_token(token) == Rejected("invalid token")


async def test_empty_directory() -> None:
    verifier = DirectoryVerifier(Directory(), secret=SECRET)
    assert await verifier.verify_password("alice", "pw") == Rejected("invalid credentials")
    assert await verifier.verify_token("t") == Rejected("invalid token")


async def test_provider_name_and_concurrency() -> None:
    verifier = DirectoryVerifier(_directory(), secret=SECRET, provider="local")
    outcomes = await asyncio.gather(
        *(verifier.verify_password("bob", "bob-pw") for _ in range(8)),
        verifier.verify_password("bob", "nope"),
    )
    assert all(isinstance(o, Verified) and o.identity.provider == "local" for o in outcomes[:-1])
    assert outcomes[-1] == Rejected("invalid credentials")
    assert directory_module.__all__ == ["DirectoryVerifier"]


# --- the cost of a guess (SPEC §5 "Cost and abuse") ----------------------------------


def _spy(monkeypatch: pytest.MonkeyPatch, verifier: DirectoryVerifier) -> list[str]:
    calls: list[str] = []
    original = verifier._verify

    def spy(hashed: str, secret: str) -> bool:
        calls.append(hashed)
        return original(hashed, secret)

    monkeypatch.setattr(verifier, "_verify", spy)
    return calls


def _many_tokens(n: int) -> Directory:
    return Directory.model_validate(
        {
            "users": [
                {"username": f"user{i}", "tokens": [_token(f"token-{i}-a"), _token(f"token-{i}-b")]}
                for i in range(n)
            ]
        }
    )


@pytest.mark.parametrize("users", [1, 12])
async def test_a_token_costs_one_argon2_run_at_most_whatever_the_directory_size(
    monkeypatch: pytest.MonkeyPatch, users: int
) -> None:
    verifier = DirectoryVerifier(_many_tokens(users), secret=SECRET)
    calls = _spy(monkeypatch, verifier)
    for bogus in ("", "token-0-c", "x" * 16384, "token-0-a "):
        assert await verifier.verify_token(bogus) == Rejected("invalid token")
    assert calls == []  # found by its keyed digest: no hash was tried
    last = f"token-{users - 1}-b"
    outcome = await verifier.verify_token(last)
    assert isinstance(outcome, Verified) and outcome.identity.sub == f"user{users - 1}"
    assert len(calls) == 1  # exactly the one hash made for it


async def test_a_token_hashed_under_another_secret_is_never_found() -> None:
    directory = Directory.model_validate(
        {"users": [{"username": "u", "tokens": [hash_token(b"another-secret" * 3, "t", FAST)]}]}
    )
    verifier = DirectoryVerifier(directory, secret=SECRET)
    assert await verifier.verify_token("t") == Rejected("invalid token")


async def test_a_wrong_password_costs_that_users_hashes_and_an_unknown_user_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    verifier = DirectoryVerifier(_many_tokens(12), secret=SECRET)
    calls = _spy(monkeypatch, verifier)
    await verifier.verify_password("user3", "guess")  # a user without app passwords
    await verifier.verify_password("nobody", "guess")
    assert len(calls) == 2  # one dummy run each, however many users exist


async def test_a_full_hash_pool_answers_unavailable_at_once() -> None:
    pool = HashPool(1, max_pending=1, max_pending_per_client=1)
    verifier = DirectoryVerifier(_directory(), secret=SECRET, pool=pool)
    release = threading.Event()
    blocker = asyncio.ensure_future(pool.run(release.wait, client="x"))  # runs
    queued = asyncio.ensure_future(pool.run(lambda: True, client="y"))  # waits
    await asyncio.sleep(0)
    try:
        assert await verifier.verify_password("alice", "alice-pw") == Unavailable(
            "hashing pool busy"
        )
        assert await verifier.verify_token("alice-token") == Unavailable("hashing pool busy")
        assert await verifier.verify_token("bogus") == Rejected("invalid token")  # no hash
    finally:
        release.set()
        await asyncio.gather(blocker, queued)
        pool.close()


# --- credential references (SPEC §5 "Sessions from header auth") ---------------------


async def test_identities_name_the_credential_they_came_from(verifier: DirectoryVerifier) -> None:
    by_old = await verifier.verify_password("alice", "old-pw")
    by_new = await verifier.verify_password("alice", "alice-pw")
    by_token = await verifier.verify_token("alice-token")
    refs = set()
    for outcome in (by_old, by_new, by_token):
        assert isinstance(outcome, Verified)
        ref = outcome.identity.credential_ref
        assert len(ref) == 64 and verifier.is_current(outcome.identity)
        assert ref not in repr(outcome.identity)  # not in log lines
        refs.add(ref)
    assert len(refs) == 3  # each credential its own reference
    # Keyed: the reference is neither the hash nor anything without the secret.
    hashes = [h.get_secret_value() for h in _directory().users[0].app_passwords]
    assert not any(h in refs for h in hashes)


async def test_a_credential_removed_from_the_directory_is_no_longer_current() -> None:
    alice_old, alice_pw, bob_pw = FAST.hash("old-pw"), FAST.hash("alice-pw"), FAST.hash("bob-pw")
    bob_tokens = [_token("bob-token-1"), _token("bob-token-2")]

    def directory(alice_passwords: list[str], bob_tokens: list[str], bob: bool = True) -> Directory:
        users: list[dict[str, object]] = [{"username": "alice", "app_passwords": alice_passwords}]
        if bob:
            users.append({"username": "bob", "app_passwords": [bob_pw], "tokens": bob_tokens})
        return Directory.model_validate({"users": users})

    before = DirectoryVerifier(directory([alice_old, alice_pw], bob_tokens), secret=SECRET)
    old_pw = await before.verify_password("alice", "old-pw")
    token = await before.verify_token("bob-token-1")
    bob = await before.verify_password("bob", "bob-pw")
    assert isinstance(old_pw, Verified) and isinstance(token, Verified)
    assert isinstance(bob, Verified)
    # The restart's directory: alice lost her old app password, bob his first token.
    after = DirectoryVerifier(directory([alice_pw], bob_tokens[1:]), secret=SECRET)
    assert not after.is_current(old_pw.identity)
    assert not after.is_current(token.identity)
    assert after.is_current(bob.identity)
    # Without bob at all, his password's sessions end too.
    gone = DirectoryVerifier(directory([alice_pw], [], bob=False), secret=SECRET)
    assert not gone.is_current(bob.identity)
    # Another secret: another reference (a rotated secret ends directory sessions).
    rotated = DirectoryVerifier(directory([alice_pw], bob_tokens), secret=SECRET + b"x")
    assert not rotated.is_current(bob.identity)


def test_identities_from_elsewhere_stay_current_and_old_directory_ones_do_not() -> None:
    verifier = DirectoryVerifier(_directory(), secret=SECRET)
    assert verifier.is_current(Identity(sub="alice", provider="app-client"))
    # A directory identity from before references existed cannot be checked: it ends.
    assert not verifier.is_current(Identity(sub="alice", provider="directory"))
    assert not verifier.is_current(Identity(sub="x", credential_ref="0" * 64))
    roundtrip = Identity.from_dict(Identity(sub="a", credential_ref="ab" * 32).to_dict())
    assert roundtrip.credential_ref == "ab" * 32
