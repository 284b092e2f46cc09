"""The pure parts: token minting and verification, credential resolution, the limits.

Includes the fuzz pass over what attackers control here: any credential
string, any claims, any header/query/cookie combination.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from litestar import Request

from gateway.config import AuthConfig
from gateway.exceptions import LimitExceeded, Unauthorized
from gateway.web.auth import (
    ApiKeyPrincipal,
    Authenticator,
    OpenPrincipal,
    RedactTokens,
    SubscriberPrincipal,
)
from gateway.web.limits import AddressConnections, RateLimit, RefundingBucket, WatchQuota

SECRET = "s" * 40
OLD_SECRET = "o" * 40
KEYS = ["key-one-0123456789", "key-two-0123456789", ""]


def authenticator(**overrides: Any) -> Authenticator:
    config = AuthConfig(
        mode="token",
        api_keys=KEYS,
        token_secret=SECRET,
        previous_token_secrets=[OLD_SECRET],
        **overrides,
    )
    return Authenticator(config)


def connection(
    headers: list[tuple[bytes, bytes]] | None = None, query: bytes = b""
) -> Request[Any, Any, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "GET",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "scheme": "http",
        "headers": headers or [],
        "query_string": query,
        "client": ("203.0.113.9", 40000),
        "server": ("127.0.0.1", 8000),
        "state": {},
        "path_params": {},
    }
    return Request(scope)  # type: ignore[arg-type]


# -- tokens -----------------------------------------------------------------------


def test_minted_token_names_its_tasks_and_expiry() -> None:
    auth = authenticator(token_ttl_s=120)
    minted = auth.mint(["videoproc:a", "videoproc:b", "videoproc:a"])
    assert minted.tasks == ["videoproc:a", "videoproc:b"]
    header = jwt.get_unverified_header(minted.token)
    assert header["alg"] == "HS256" and isinstance(header["kid"], str)
    assert SECRET not in header["kid"]
    claims = jwt.decode(minted.token, SECRET, algorithms=["HS256"])
    assert claims["typ"] == "subscriber" and claims["tasks"] == minted.tasks
    assert claims["exp"] == minted.expires_at and 120 <= claims["exp"] - claims["iat"] <= 121
    principal = auth.verify(minted.token)
    assert principal == SubscriberPrincipal(frozenset(minted.tasks), minted.expires_at)


def test_rotation_previous_secret_verifies_and_unknown_secret_does_not() -> None:
    old = Authenticator(AuthConfig(mode="token", token_secret=OLD_SECRET)).mint(["a:1"]).token
    assert authenticator().verify(old).tasks == {"a:1"}
    # After the old secret is dropped from previous_token_secrets, its tokens stop working.
    rotated = Authenticator(AuthConfig(mode="token", token_secret=SECRET))
    with pytest.raises(Unauthorized) as refused:
        rotated.verify(old)
    assert refused.value.code == "invalid_token"


def test_expired_token_is_token_expired_but_a_forged_expired_one_is_invalid() -> None:
    long_ago = Authenticator(
        AuthConfig(mode="token", token_secret=SECRET), clock=lambda: time.time() - 7200
    )
    expired = long_ago.mint(["a:1"], ttl_s=60).token
    with pytest.raises(Unauthorized) as refused:
        authenticator().verify(expired)
    assert refused.value.code == "token_expired"
    forged = jwt.encode(
        {"typ": "subscriber", "tasks": ["a:1"], "iat": 1, "exp": 2}, "x" * 40, algorithm="HS256"
    )
    with pytest.raises(Unauthorized) as refused:
        authenticator().verify(forged)
    assert refused.value.code == "invalid_token"


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_only_hs256_is_accepted(algorithm: str) -> None:
    now = int(time.time())
    claims = {"typ": "subscriber", "tasks": ["a:1"], "iat": now, "exp": now + 60}
    token = jwt.encode(claims, SECRET + "x" * 30, algorithm=algorithm)
    with pytest.raises(Unauthorized):
        authenticator().verify(token)


def test_a_short_token_secret_is_warned_about_and_still_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="pollcast.auth"):
        weak = Authenticator(AuthConfig(mode="token", token_secret="short"))
    assert "shorter than 32 bytes" in caplog.text
    # pytest turns warnings into errors: PyJWT's per-call warning is silenced.
    assert weak.verify(weak.mint(["a:1"]).token).tasks == {"a:1"}


claims_strategy = st.fixed_dictionaries(
    {},
    optional={
        "typ": st.sampled_from(["subscriber", "admin", ""]) | st.text(max_size=5),
        "tasks": st.lists(st.text(max_size=12), max_size=4)
        | st.text(max_size=5)
        | st.none()
        | st.lists(st.integers(), max_size=2),
        "iat": st.integers(-(2**40), 2**40) | st.text(max_size=3),
        "exp": st.integers(-(2**40), 2**40)
        | st.floats()
        | st.sampled_from([10**400, -(10**400), 2**63])
        | st.text(max_size=3),
        "extra": st.text(max_size=5),
    },
)


@settings(max_examples=200, deadline=None, database=None)
@given(claims=claims_strategy)
def test_any_signed_claims_verify_to_a_subscriber_or_unauthorized(claims: dict[str, Any]) -> None:
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    try:
        principal = authenticator().verify(token)
    except Unauthorized as exc:
        assert exc.code in ("invalid_token", "token_expired")
        return
    assert claims["typ"] == "subscriber"
    assert principal.tasks == frozenset(claims["tasks"]) and principal.tasks
    assert principal.expires_at > time.time()


@settings(max_examples=300, deadline=None, database=None)
@given(
    credential=st.text(max_size=200) | st.from_regex(r"\A[\w-]{0,40}\.[\w-]{0,60}\.[\w-]{0,40}\Z")
)
def test_any_credential_string_is_a_principal_or_unauthorized(credential: str) -> None:
    auth = authenticator()
    for where in ("header", "query", "cookie"):
        value = credential.encode("utf-8", "replace")
        if where == "header":
            conn = connection([(b"authorization", b"Bearer " + value)])
        elif where == "query":
            conn = connection(query=b"token=" + value.replace(b"&", b"%26"))
        else:
            conn = connection([(b"cookie", b"pollcast_token=" + value)])
        try:
            principal = auth.resolve(conn)
        except Unauthorized as exc:
            assert exc.code in ("unauthorized", "invalid_token", "token_expired")
            continue
        assert isinstance(principal, ApiKeyPrincipal | SubscriberPrincipal)


def test_keys_only_in_the_header_and_an_empty_key_matches_nothing() -> None:
    auth = authenticator()
    assert auth.resolve(connection([(b"authorization", b"Bearer " + KEYS[1].encode())])) == (
        ApiKeyPrincipal("api-key-1")
    )
    assert auth.match_key("") is None
    for refused in (
        connection(query=b"token=" + KEYS[0].encode()),
        connection([(b"cookie", b"pollcast_token=" + KEYS[0].encode())]),
        connection([(b"authorization", b"Token " + KEYS[0].encode())]),
        connection([(b"authorization", b"Bearer")]),
    ):
        with pytest.raises(Unauthorized) as exc:
            auth.resolve(refused)
        assert exc.value.code == "invalid_token"
    with pytest.raises(Unauthorized) as missing:
        auth.resolve(connection())
    assert missing.value.code == "unauthorized"


def test_the_header_wins_and_a_bad_one_is_not_skipped() -> None:
    auth = authenticator()
    token = auth.mint(["a:1"]).token.encode()
    both = connection([(b"authorization", b"Bearer nope")], query=b"token=" + token)
    with pytest.raises(Unauthorized):
        auth.resolve(both)


def test_open_mode_is_anyone_by_address() -> None:
    auth = Authenticator(AuthConfig(mode="open"))
    assert auth.resolve(connection([(b"authorization", b"Bearer nope")])) == OpenPrincipal(
        "203.0.113.9"
    )


def test_tokens_in_query_strings_are_redacted_from_log_lines() -> None:
    record = logging.LogRecord(
        "uvicorn.error",
        logging.INFO,
        __file__,
        1,
        '%s - "WebSocket %s" [accepted]',
        ("1.2.3.4:5", "/v1/ws?a=1&token=eyJ.abc.def&b=2"),
        None,
    )
    assert RedactTokens().filter(record)
    assert (
        record.getMessage() == '1.2.3.4:5 - "WebSocket /v1/ws?a=1&token=[redacted]&b=2" [accepted]'
    )


# -- limits -------------------------------------------------------------------------


def test_refunding_bucket_does_not_charge_refusals() -> None:
    bucket = RefundingBucket(2.0, burst=2)
    assert bucket.try_take(0.0) == 0 and bucket.try_take(0.0) == 0
    waits = [bucket.try_take(0.1) for _ in range(100)]
    assert all(w == pytest.approx(0.4) for w in waits)  # refusals did not push it back
    assert bucket.try_take(0.5) == 0  # exactly when promised


def test_rate_limit_retry_after_is_honest_and_per_principal() -> None:
    now = [100.0]
    limit = RateLimit(1.0, 2, what="things", clock=lambda: now[0], max_principals=3)
    limit.check("a")
    limit.check("a")
    with pytest.raises(LimitExceeded) as refused:
        limit.check("a")
    assert refused.value.retry_after_s == pytest.approx(1.0)
    limit.check("b")  # others are not affected
    now[0] += refused.value.retry_after_s or 0
    limit.check("a")
    for who in ("c", "d", "e"):  # over max_principals: full buckets are forgotten
        now[0] += 10
        limit.check(who)
    assert len(limit._buckets) <= 3


def test_watch_quota_drops_ended_tasks_lazily() -> None:
    quota = WatchQuota(2)
    watched = {"a:1", "a:2"}
    quota.admit("k", "a:1", watched.__contains__)
    quota.admit("k", "a:2", watched.__contains__)
    quota.admit("k", "a:2", watched.__contains__)  # again: free
    with pytest.raises(LimitExceeded) as refused:
        quota.admit("k", "a:3", watched.__contains__)
    assert refused.value.retry_after_s == 60
    quota.admit("other", "a:3", watched.__contains__)
    watched.discard("a:1")  # it ended
    quota.admit("k", "a:3", watched.__contains__)
    quota.release("a:3")
    assert quota.held("k") == 1 and quota.held("other") == 0


class FakeTransport:
    def __init__(self) -> None:
        self.closing = False

    def is_closing(self) -> bool:
        return self.closing


def test_address_connections_prune_closed_transports() -> None:
    conns = AddressConnections(2)
    a, b, c = FakeTransport(), FakeTransport(), FakeTransport()
    assert conns.admit("1.1.1.1", a) and conns.admit("1.1.1.1", b)
    assert not conns.admit("1.1.1.1", c)
    assert conns.admit("2.2.2.2", c)  # another address
    a.closing = True  # e.g. a WebSocket that ended after leaving the HTTP protocol
    assert conns.admit("1.1.1.1", FakeTransport())
    conns.release("1.1.1.1", b)
    assert conns.count("1.1.1.1") == 1
