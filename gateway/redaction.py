"""One way to keep credentials out of everything the gateway emits.

An upstream may echo a key back in any encoding it received it in, or in
one of its own: percent-encoded in a URL it quotes, base64 inside a
``Basic`` header it reflects, JSON-escaped inside a body it embeds. A
:class:`Redactor` knows every such form of every configured credential and
replaces them, longest first, by ``[redacted]`` — in event fields
(recursively), log lines, problem details, metrics text and the probe's
output.

Short credentials (fewer than :data:`SHORT_SECRET_CHARS` characters) are
redacted too, but only as a whole token, where no letter or digit touches
them on either side: ``abc12`` goes in ``key=abc12&x`` but ``abc123.png``
stays as it is. A short value also occurs by chance inside legitimate text,
and turning every result URL that contains it into ``[redacted]`` would
break the results while protecting little (a 5-character secret is
guessable anyway).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote, quote_plus

import msgspec

if TYPE_CHECKING:
    from gateway.config import Config

__all__ = ["REDACTED", "SHORT_SECRET_CHARS", "Redactor", "for_config", "forms"]

REDACTED = "[redacted]"
SHORT_SECRET_CHARS = 6
#: Deeper than this, a value is replaced whole: nothing upstream needs it, and
#: recursion must not be the way to take the gateway down.
MAX_DEPTH = 64

T = TypeVar("T")

_ANY_PERCENT_HEX = re.compile(r"%[0-9A-Fa-f]{2}")


def _literal(form: str) -> str:
    """``form`` as a regex; its percent-escapes match with hex digits in either case
    (RFC 3986 §2.1: "%2b" and "%2B" are the same octet)."""
    parts = _ANY_PERCENT_HEX.split(form)
    escapes = _ANY_PERCENT_HEX.findall(form)
    out = [re.escape(parts[0])]
    for escape, part in zip(escapes, parts[1:], strict=True):
        out.append("%" + "".join(f"[{c.upper()}{c.lower()}]" for c in escape[1:]))
        out.append(re.escape(part))
    return "".join(out)


def _base64_forms(data: bytes) -> set[str]:
    out: set[str] = set()
    for encoded in (base64.b64encode(data), base64.urlsafe_b64encode(data)):
        text = encoded.decode("ascii")
        out.update((text, text.rstrip("=")))
    return out


def forms(secret: str) -> set[str]:
    """Every spelling of ``secret`` an upstream or a library may produce.

    Raw; percent-encoded as ``quote`` (with and without ``/`` kept) and
    ``quote_plus`` do it (the redactor matches their hex digits in any case); base64
    (standard and URL-safe alphabets, padded and not); JSON string contents
    (ASCII-only escapes or not, ``/`` escaped or not).
    """
    if not secret:
        return set()
    found = {secret}
    found.update((quote(secret, safe=""), quote(secret), quote_plus(secret)))
    found |= _base64_forms(secret.encode("utf-8"))
    for escaped in (
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        msgspec.json.encode(secret).decode("utf-8")[1:-1],
    ):
        found.update((escaped, escaped.replace("/", "\\/")))
    found.discard("")
    return found


class Redactor:
    """Replaces every form (:func:`forms`) of the given credentials by ``[redacted]``.

    Args:
        secrets: credential values; empty ones are ignored.
        groups: credentials that an adapter may combine into ``a:b`` pairs
            (HTTP Basic style): the base64 of each ordered pair within a
            group is redacted as well.
    """

    def __init__(self, secrets: Iterable[str] = (), *, groups: Iterable[Sequence[str]] = ()):
        self._groups = [tuple(s for s in group if s) for group in groups]
        self._secrets = {s for s in secrets if s} | {s for g in self._groups for s in g}

    @classmethod
    def of_groups(cls, groups: Iterable[Sequence[str]]) -> Redactor:
        """A redactor for several credential sets (one per adapter, say)."""
        return cls(groups=groups)

    def __bool__(self) -> bool:
        return bool(self._secrets)

    @cached_property
    def _pattern(self) -> re.Pattern[str] | None:
        spelled: dict[str, bool] = {}  # form → redact only as a whole token
        for secret in self._secrets:
            short = len(secret) < SHORT_SECRET_CHARS
            for form in forms(secret):
                spelled[form] = spelled.get(form, True) and short
        for group in self._groups:
            for a in group:
                for b in group:
                    if a != b:
                        for form in _base64_forms(f"{a}:{b}".encode()):
                            spelled[form] = False
        if not spelled:
            return None
        # Longest first: a form that contains another is replaced whole.
        ordered = sorted(spelled, key=lambda f: (-len(f), f))
        alternatives = [
            rf"(?<![A-Za-z0-9]){_literal(f)}(?![A-Za-z0-9])" if spelled[f] else _literal(f)
            for f in ordered
        ]
        return re.compile("|".join(alternatives))

    def text(self, text: str) -> str:
        """``text`` with every form of every credential replaced."""
        pattern = self._pattern
        if pattern is None or not text or pattern.search(text) is None:
            return text  # the same object: callers see nothing changed
        return pattern.sub(REDACTED, text)

    def clean(self, raw: bytes) -> bool:
        """Whether ``raw`` (a reply body) certainly holds no form of any credential.

        One scan of the bytes instead of a walk of everything decoded from
        them: a body without a match and without JSON ``\\u`` escapes (which
        could spell a credential one character at a time) decodes to values
        that hold none either.
        """
        pattern = self._pattern
        if pattern is None:
            return True
        if b"\\u" in raw:
            return False
        return pattern.search(raw.decode("utf-8", "replace")) is None

    def value(self, value: T) -> T:
        """``value`` with every string inside it redacted (dict keys too).

        Walks dicts, lists, tuples, sets and msgspec Structs; returns the same
        object when nothing changed. Enum members (``State``) are left alone:
        they are the gateway's own vocabulary.
        """
        if self._pattern is None:
            return value
        result: T = self._walk(value, 0)
        return result

    def _walk(self, value: Any, depth: int) -> Any:
        if type(value) is str:
            return self.text(value)
        if depth >= MAX_DEPTH:
            return REDACTED if isinstance(value, dict | list | tuple | msgspec.Struct) else value
        if isinstance(value, dict):
            pairs = [(self._walk(k, depth + 1), self._walk(v, depth + 1)) for k, v in value.items()]
            if all(
                k is k0 and v is v0 for (k, v), (k0, v0) in zip(pairs, value.items(), strict=True)
            ):
                return value
            return dict(pairs)
        if type(value) in (list, tuple, set, frozenset):
            items = [self._walk(v, depth + 1) for v in value]
            if all(a is b for a, b in zip(items, value, strict=True)):
                return value
            return type(value)(items)
        if isinstance(value, msgspec.Struct):
            changes = {}
            for name in value.__struct_fields__:
                old = getattr(value, name)
                new = self._walk(old, depth + 1)
                if new is not old:
                    changes[name] = new
            return msgspec.structs.replace(value, **changes) if changes else value
        return value


def for_config(config: Config) -> Redactor:
    """Every credential of the gateway: API keys, token and webhook secrets, and
    each provider's (whose credentials may be paired, as in HTTP Basic)."""
    return Redactor(
        config.secret_values(),
        groups=[rt.adapter.secret_values() for rt in config.runtimes().values()],
    )
