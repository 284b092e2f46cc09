"""Who is asking, and what they may do (docs/protocol.md, "Auth").

Three kinds of principal:

* :class:`ApiKeyPrincipal` — a backend: ``Authorization: Bearer <api key>``.
  The key is compared in constant time with *every* configured key, so
  several keys can be live at once while one is rotated out.
* :class:`SubscriberPrincipal` — a browser, holding a short-lived JWT (HS256)
  minted by ``POST /v1/tasks`` or ``POST /v1/tokens``: the task keys it may
  read and an expiry. Accepted in ``Authorization``, in ``?token=``
  (EventSource cannot set headers) and in the ``pollcast_token`` cookie.
  ``auth.token_secret`` signs; ``auth.previous_token_secrets`` still verify,
  so rotating the secret does not cut off tokens already handed out.
* :class:`OpenPrincipal` — ``auth.mode = "open"``: anyone, known by address
  (for the per-principal limits).

The checks are small functions the handlers call (:func:`require_backend`,
:func:`authorize_read`, :func:`may_poll`): only an API key (or open mode) may
register tasks, mint tokens or make the gateway poll a task; a subscriber
token reads the tasks it names, only once they are known, and never causes
an upstream call.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import re
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, cast
from urllib.parse import urlsplit

import jwt
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import SkipValidation

from gateway.config import AuthConfig
from gateway.core.model import TaskKey
from gateway.exceptions import Forbidden, TooManyTasks, Unauthorized
from gateway.service import Gateway

__all__ = [
    "COOKIE",
    "REDACT_TOKENS",
    "TOKEN_TYPE",
    "ApiKeyPrincipal",
    "Authenticated",
    "Authenticator",
    "MintedToken",
    "OpenPrincipal",
    "Principal",
    "SubscriberPrincipal",
    "authenticator_of",
    "authorize_read",
    "check_socket_origin",
    "limit_key",
    "may_poll",
    "origin_allowed",
    "provide_principal",
    "require_backend",
]

log = logging.getLogger("pollcast.auth")

COOKIE = "pollcast_token"
TOKEN_TYPE = "subscriber"
ALGORITHM = "HS256"
# 100 tasks with 256-character ids fit; so does the whole head (server.max_header_bytes).
MAX_TOKEN_CHARS = 60000
MAX_TOKEN_TASKS = 1000
# RFC 7518 §3.2: an HS256 key shorter than the hash output (32 bytes) is weak.
MIN_SECRET_BYTES = 32


@dataclass(frozen=True, slots=True)
class ApiKeyPrincipal:
    """A backend. ``key_id`` is the key's position in ``auth.api_keys`` — never the key."""

    key_id: str
    #: Its streams and snapshots make the gateway poll the upstream (see :func:`may_poll`).
    may_poll: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class SubscriberPrincipal:
    """A browser with a subscriber token: may read ``tasks`` until ``expires_at`` (epoch s)."""

    tasks: frozenset[str]
    expires_at: float
    #: Reads what is stored and what others' polling publishes; never causes a poll.
    may_poll: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class OpenPrincipal:
    """Anyone (``auth.mode = "open"``), known by client address."""

    client: str
    may_poll: ClassVar[bool] = True


Principal = ApiKeyPrincipal | SubscriberPrincipal | OpenPrincipal

#: A handler parameter ``principal: Authenticated`` makes the route authenticated.
#: (Not re-validated: msgspec cannot convert into a union of dataclasses.)
Authenticated = NamedDependency[SkipValidation[Principal]]


@dataclass(frozen=True, slots=True)
class MintedToken:
    token: str
    expires_at: float  # epoch seconds (the token's ``exp``)
    tasks: list[str]


def _kid(secret: str) -> str:
    """A stable name for a signing secret, so verification picks the right one at once.

    A domain-separated hash prefix: it names the secret without revealing it.
    """
    return hashlib.sha256(b"pollcast-token-kid\x00" + secret.encode()).hexdigest()[:16]


def _digest(value: str) -> bytes:
    # Equal-length digests: compare_digest then takes the same time whatever the input.
    return hashlib.sha256(value.encode("utf-8", "replace")).digest()


class Authenticator:
    """Resolves a connection to a :class:`Principal`; mints and verifies subscriber tokens."""

    def __init__(self, config: AuthConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.mode = config.mode
        self.clock = clock
        self._key_digests = [_digest(key) for key in config.api_keys if key]
        secrets = [s for s in [config.token_secret, *config.previous_token_secrets] if s]
        self._signing = config.token_secret or None
        self._verifying = {_kid(s): s for s in secrets}
        self._weak = any(len(s.encode()) < MIN_SECRET_BYTES for s in secrets)
        if self._weak and self.mode == "token":
            log.warning(
                "a token secret is shorter than %d bytes; use at least 32 random bytes",
                MIN_SECRET_BYTES,
            )

    # -- principals -----------------------------------------------------------

    def resolve(self, connection: ASGIConnection[Any, Any, Any, Any]) -> Principal:
        """The principal behind an HTTP request or a WebSocket handshake.

        ``Authorization: Bearer`` wins over ``?token=``, which wins over the
        cookie; a present but bad credential is refused, never skipped.

        Raises:
            Unauthorized: no credential, an unknown key, a bad or expired token.
        """
        if self.mode == "open":
            return OpenPrincipal(client_address(connection))
        header = connection.headers.get("authorization")
        if header is not None:
            scheme, _, credential = header.strip().partition(" ")
            credential = credential.strip()
            if scheme.lower() != "bearer" or not credential:
                raise Unauthorized(
                    "Authorization must be 'Bearer <api key or subscriber token>'",
                    code="invalid_token",
                )
            key_id = self.match_key(credential)
            if key_id is not None:
                return ApiKeyPrincipal(key_id)
            return self.verify(credential)
        # API keys are accepted in the header only: a key in a URL ends up in logs.
        token = connection.query_params.get("token") or connection.cookies.get(COOKIE)
        if token:
            return self.verify(token)
        raise Unauthorized(
            "credentials required: 'Authorization: Bearer <api key>' for a backend, "
            "a subscriber token (header, ?token= or cookie) for a browser"
        )

    def match_key(self, credential: str) -> str | None:
        """The id of the configured API key equal to ``credential``, in constant time."""
        digest = _digest(credential)
        found: str | None = None
        for i, key_digest in enumerate(self._key_digests):
            # No early exit: every key is compared, whichever matches.
            if hmac.compare_digest(digest, key_digest) and found is None:
                found = f"api-key-{i}"
        return found

    # -- subscriber tokens ----------------------------------------------------

    @property
    def can_mint(self) -> bool:
        return self._signing is not None

    def mint(self, tasks: Iterable[str], ttl_s: float | None = None) -> MintedToken:
        """A subscriber token for ``tasks`` (already validated keys), valid ``ttl_s`` seconds.

        Raises:
            TooManyTasks: the token would be too long to send in a URL.
            RuntimeError: no ``auth.token_secret`` is configured.
        """
        if self._signing is None:
            raise RuntimeError("no auth.token_secret is configured")
        names = list(dict.fromkeys(tasks))
        now = self.clock()
        expires = math.ceil(now + (ttl_s if ttl_s is not None else self.config.token_ttl_s))
        claims = {"typ": TOKEN_TYPE, "tasks": names, "iat": int(now), "exp": expires}
        with self._quiet():
            token = jwt.encode(
                claims, self._signing, algorithm=ALGORITHM, headers={"kid": _kid(self._signing)}
            )
        if len(token) > MAX_TOKEN_CHARS:
            raise TooManyTasks(
                f"a token for these tasks would be {len(token)} characters long; "
                f"the limit is {MAX_TOKEN_CHARS}: mint several tokens",
                field="tasks",
            )
        return MintedToken(token=token, expires_at=float(expires), tasks=names)

    def verify(self, token: str) -> SubscriberPrincipal:
        """Check signature, expiry and shape of a subscriber token.

        Raises:
            Unauthorized: ``token_expired`` for a genuine but expired token,
                ``invalid_token`` for anything else.
        """
        invalid = Unauthorized(
            "the token is not a valid subscriber token of this gateway", code="invalid_token"
        )
        if len(token) > MAX_TOKEN_CHARS or not self._verifying:
            raise invalid
        try:
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.PyJWTError:
            raise invalid from None
        secrets = (
            [self._verifying[kid]]
            if isinstance(kid, str) and kid in self._verifying
            else list(self._verifying.values())
        )
        for secret in secrets:
            try:
                with self._quiet():
                    claims = jwt.decode(
                        token,
                        secret,
                        algorithms=[ALGORITHM],  # never "none", never whatever the token says
                        options={"require": ["exp", "iat"], "verify_iat": False},
                    )
            except jwt.InvalidSignatureError:
                continue
            except jwt.ExpiredSignatureError:
                # PyJWT checks the signature before the claims: this token is genuine.
                raise Unauthorized(
                    "the subscriber token expired; ask the backend for a new one",
                    code="token_expired",
                ) from None
            except (jwt.PyJWTError, ValueError, TypeError, OverflowError):
                # PyJWT compares ``exp`` as a number: 1e400 overflows on the way.
                raise invalid from None
            return self._subscriber(claims, invalid)
        raise invalid

    @staticmethod
    def _subscriber(claims: dict[str, Any], invalid: Unauthorized) -> SubscriberPrincipal:
        tasks = claims.get("tasks")
        exp = claims.get("exp")
        if (
            claims.get("typ") != TOKEN_TYPE
            or not isinstance(tasks, list)
            or not 0 < len(tasks) <= MAX_TOKEN_TASKS
            or not all(isinstance(t, str) and 0 < len(t) <= 300 for t in tasks)
            or not isinstance(exp, int | float)
            or not 0 < exp < 1e12  # seconds since 1970: anything else is no expiry of ours
        ):
            raise invalid
        return SubscriberPrincipal(tasks=frozenset(cast(list[str], tasks)), expires_at=float(exp))

    @contextmanager
    def _quiet(self) -> Iterator[None]:
        """PyJWT warns on every use of a short HMAC key; we warned once at startup."""
        if not self._weak:
            yield
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", jwt.InsecureKeyLengthWarning)
            yield


def client_address(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
    client = connection.client
    return client.host if client is not None and client.host else "unknown"


def limit_key(principal: Principal) -> str:
    """Who the per-principal limits count against."""
    match principal:
        case ApiKeyPrincipal(key_id=key_id):
            return key_id
        case OpenPrincipal(client=client):
            return f"address {client}"
        case SubscriberPrincipal():
            return "subscriber"


# -- authorization ------------------------------------------------------------


def may_poll(principal: Principal) -> bool:
    """Whether what ``principal`` opens (a stream, a WebSocket subscription, a
    snapshot) may make the gateway poll the upstream.

    An API key (or open mode) may: that is what registering and streaming are
    for. A subscriber token may not: it reads the stored snapshot, the history
    and whatever events others' polling produces, so a token handed to a
    browser cannot keep (or start again) the upstream calls of a task whose
    watch a backend deleted.
    """
    return principal.may_poll


def require_backend(principal: Principal, action: str) -> None:
    """Only an API key (or open mode) may ``action``.

    Raises:
        Forbidden: for a subscriber token.
    """
    if isinstance(principal, SubscriberPrincipal):
        raise Forbidden(f"a subscriber token cannot {action}; that takes an API key")


async def authorize_read(gw: Gateway, principal: Principal, keys: Iterable[TaskKey]) -> None:
    """May ``principal`` read these tasks (and so follow them)?

    A subscriber reads only the tasks its token names, and only tasks the
    gateway already polls or remembers: a token never makes the gateway
    start spending upstream calls on a task nobody registered.

    Raises:
        Forbidden: ``forbidden`` (not in the token) or ``not_watched``.
    """
    if not isinstance(principal, SubscriberPrincipal):
        return
    keys = list(keys)
    for key in keys:
        name = str(key)
        if name not in principal.tasks:
            raise Forbidden(f"this token does not grant {name}", field="task")
    for key in keys:
        if await gw.is_known(key):
            continue
        raise Forbidden(
            f"{key} is not being watched; a backend registers it with POST /v1/tasks first",
            code="not_watched",
            field="task",
        )


def check_socket_origin(
    connection: ASGIConnection[Any, Any, Any, Any], allowed_origins: Iterable[str]
) -> None:
    """Refuse a cross-site WebSocket riding on the subscriber cookie.

    A browser attaches cookies to a WebSocket handshake from any page, and
    WebSockets have no CORS: so when the cookie is the only credential, the
    page's ``Origin`` must be this gateway's own or one of ``server.cors_origins``.

    Raises:
        Forbidden: cookie credentials from another origin.
    """
    if "authorization" in connection.headers or connection.query_params.get("token"):
        return
    origin = connection.headers.get("origin")
    if origin is None or COOKIE not in connection.cookies:
        return
    if origin_allowed(origin, allowed_origins):
        return
    if urlsplit(origin).netloc == connection.headers.get("host"):
        return
    raise Forbidden(
        "cookie credentials are not accepted from this page's origin; "
        "add it to server.cors_origins or pass ?token=",
        code="forbidden_origin",
    )


def origin_allowed(origin: str, allowed_origins: Iterable[str]) -> bool:
    """Whether ``origin`` is one of ``server.cors_origins``, matched as the CORS
    middleware matches them (``"https://*.example.com"``: any subdomain)."""
    for allowed in allowed_origins:
        if "*" in allowed:
            pattern = ".*".join(re.escape(part) for part in allowed.split("*"))
            if re.fullmatch(pattern, origin):
                return True
        elif origin == allowed:
            return True
    return False


_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s\"']+")


class RedactTokens(logging.Filter):
    """Blank out ``?token=`` values in log lines.

    uvicorn logs each WebSocket handshake with its query string at INFO
    (``"WebSocket /v1/ws?token=…" [accepted]``), and a subscriber token is a
    credential until it expires.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "token=" in message:
            record.msg = _TOKEN_IN_QUERY.sub(r"\1[redacted]", message)
            record.args = None
        return True


#: Installed on uvicorn's logger by :func:`gateway.server.uvicorn_config`.
REDACT_TOKENS = RedactTokens()


def authenticator_of(state: State) -> Authenticator:
    return cast(Authenticator, state.auth)


async def provide_principal(request: Request[Any, Any, Any], state: State) -> Principal:
    """Litestar dependency ``principal`` for HTTP handlers."""
    return authenticator_of(state).resolve(request)
