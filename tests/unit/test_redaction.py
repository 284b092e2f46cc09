"""The redaction primitive: every form of a credential goes, nothing else does."""

from __future__ import annotations

import base64
from urllib.parse import quote, urlencode

import msgspec
import pytest

from gateway.core.model import ErrorInfo, Observation, Result, State
from gateway.probe import redact
from gateway.redaction import REDACTED, Redactor, forms
from tests.security.spellings import spellings

SECRET = "s3cr3t/k+y=v&a l ü"
PARTNER = "user-42"


@pytest.mark.parametrize("form", spellings(SECRET))
def test_every_form_of_a_credential_is_redacted(form: str) -> None:
    redactor = Redactor([SECRET])
    assert redactor.text(f"before {form} after") == f"before {REDACTED} after"


def test_base64_of_a_pair_within_a_group_is_redacted() -> None:
    basic = base64.b64encode(f"{PARTNER}:{SECRET}".encode()).decode()
    redactor = Redactor(groups=[(PARTNER, SECRET)])
    assert redactor.text(f"Authorization: Basic {basic}") == f"Authorization: Basic {REDACTED}"
    # Pairs across groups are not built (no adapter combines two providers' keys).
    apart = Redactor(groups=[(PARTNER,), (SECRET,)])
    assert basic in apart.text(basic)


def test_longest_form_wins_over_a_secret_it_contains() -> None:
    redactor = Redactor(["abcdef123", "abcdef123456789"])
    assert redactor.text("x abcdef123456789 y") == f"x {REDACTED} y"
    assert redactor.text("abcdef123!") == f"{REDACTED}!"


def test_short_secrets_are_redacted_only_as_whole_tokens() -> None:
    redactor = Redactor(["k3y9"])
    assert redactor.text("key=k3y9&next") == f"key={REDACTED}&next"
    assert redactor.text('{"key": "k3y9"}') == f'{{"key": "{REDACTED}"}}'
    assert redactor.text("k3y9") == REDACTED
    # Inside a longer word it is a coincidence, not the credential: left alone.
    assert redactor.text("https://cdn/k3y9abc.png") == "https://cdn/k3y9abc.png"
    assert redactor.text("xk3y9") == "xk3y9"


def test_a_long_secret_is_redacted_even_inside_a_word() -> None:
    redactor = Redactor(["0123456789abcdef"])
    assert redactor.text("zz0123456789abcdefzz") == f"zz{REDACTED}zz"


def test_values_are_walked_recursively_and_unchanged_values_are_the_same_object() -> None:
    redactor = Redactor([SECRET])
    enc = quote(SECRET, safe="")
    observation = Observation(
        task_id="t1",
        state=State.FAILED,
        message=f"echo {SECRET}",
        result=Result(urls=(f"https://x/?k={enc}",), files={"a": "b"}, meta={SECRET: [SECRET]}),
        error=ErrorInfo(code=SECRET, message=f"bad key {enc}"),
        upstream={"status": SECRET, "nested": {"list": [1, {"deep": SECRET}], "n": 3}},
    )
    clean = redactor.value(observation)
    assert clean.state is State.FAILED and clean.task_id == "t1"
    text = msgspec.json.encode(clean).decode()
    assert SECRET not in text and enc not in text
    assert clean.upstream == {
        "status": REDACTED,
        "nested": {"list": [1, {"deep": REDACTED}], "n": 3},
    }
    assert clean.result is not None and clean.result.meta == {REDACTED: [REDACTED]}
    assert clean.result.files is observation.result.files  # type: ignore[union-attr]
    plain = Observation(task_id="t2", message="nothing secret", upstream={"status": 1})
    assert redactor.value(plain) is plain


def test_no_secrets_means_no_change() -> None:
    redactor = Redactor(["", ""])
    assert not redactor
    assert redactor.text("anything") == "anything"
    assert forms("") == set()


def test_deep_nesting_is_replaced_not_recursed_without_end() -> None:
    redactor = Redactor(["0123456789abcdef"])
    deep: list[object] = []
    node = deep
    for _ in range(500):
        child: list[object] = []
        node.append(child)
        node = child
    node.append("0123456789abcdef")
    assert "0123456789abcdef" not in repr(redactor.value(deep))


def test_probe_output_redacts_query_credentials_as_urlencode_writes_them() -> None:
    secret = "q/k+y=v& 1"
    line = "GET https://api.example.com/status?" + urlencode([("key", secret), ("id", "7")])
    assert redact(line, [secret]) == "GET https://api.example.com/status?key=[redacted]&id=7"


@pytest.mark.parametrize("form", sorted(spellings(SECRET)))
def test_a_body_holding_any_form_is_not_clean(form: str) -> None:
    body = msgspec.json.encode({"status": f"x{form}y"})
    assert not Redactor([SECRET]).clean(body)


def test_a_body_with_unicode_escapes_is_never_taken_as_clean() -> None:
    # "\u0053..." may spell the secret one escaped character at a time.
    spelled = "".join(f"\\u{ord(c):04x}" for c in SECRET)
    assert not Redactor([SECRET]).clean(f'{{"status": "{spelled}"}}'.encode())


def test_a_body_without_any_form_is_clean() -> None:
    assert Redactor([SECRET]).clean(b'{"status": "running", "progress": 40}')
    assert Redactor([]).clean(SECRET.encode())
