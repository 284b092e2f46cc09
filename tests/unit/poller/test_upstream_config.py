"""A provider's HTTP options in the config: parsed, checked with precise key paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trustme

from gateway.config import parse_config
from gateway.exceptions import ConfigError
from gateway.poller.upstream import HttpSettings
from gateway.service import Gateway

NO_ENV: dict[str, str] = {}


def doc(**http: Any) -> dict[str, Any]:
    return {"providers": {"vp": {"kind": "videoproc", "base_url": "http://x", **http}}}


def error(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data, NO_ENV)
    return info.value


def test_the_defaults_bound_every_reply_and_use_no_proxy() -> None:
    runtime = parse_config(doc(), NO_ENV).runtimes()["vp"]
    assert runtime.http == HttpSettings()
    assert runtime.http.proxy is None and not runtime.http.trust_env
    assert (runtime.http.max_body_bytes, runtime.http.max_headers) == (16 * 1024 * 1024, 128)


def test_the_options_reach_the_runtime_and_the_client(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(bundle))
    config = parse_config(
        doc(
            proxy="http://proxy.internal:3128",
            ca_file=str(bundle),
            max_body_bytes=65536,
            max_header_bytes=4096,
            max_headers=64,
            concurrency=7,
        ),
        NO_ENV,
    )
    expected = HttpSettings(
        proxy="http://proxy.internal:3128",
        ca_file=str(bundle),
        max_body_bytes=65536,
        max_header_bytes=4096,
        max_headers=64,
    )
    assert config.providers["vp"].http == expected
    assert config.runtimes()["vp"].http == expected
    client = Gateway(config).http["vp"]
    assert (client.settings, client.concurrency) == (expected, 7)


@pytest.mark.parametrize(
    ("http", "path", "message"),
    [
        ({"proxy": "socks5://p:1080"}, "providers.vp.proxy", "http:// or https://"),
        ({"proxy": "http://"}, "providers.vp.proxy", "needs a host"),
        ({"proxy": "http://p:99999"}, "providers.vp.proxy", "port"),
        ({"proxy": "http://p:3128/path"}, "providers.vp.proxy", "no path"),
        (
            {"proxy": "http://p:3128", "trust_env": True},
            "providers.vp.trust_env",
            "either proxy or trust_env",
        ),
        ({"trust_env": "yes"}, "providers.vp.trust_env", "Expected `bool`"),
        ({"max_body_bytes": 0}, "providers.vp.max_body_bytes", ">= 1024"),
        ({"max_body_bytes": 1 << 40}, "providers.vp.max_body_bytes", "<= 1073741824"),
        ({"max_header_bytes": 10}, "providers.vp.max_header_bytes", ">= 256"),
        ({"max_headers": 100_000}, "providers.vp.max_headers", "<= 10000"),
        ({"verify": False}, "providers.vp.verify", "unknown key"),  # TLS is always verified
    ],
)
def test_bad_options_are_named_by_their_key_path(
    http: dict[str, Any], path: str, message: str
) -> None:
    err = error(doc(**http))
    assert err.path == path
    assert message in err.message


def test_a_ca_file_must_exist_and_hold_certificates(tmp_path: Path) -> None:
    missing = error(doc(ca_file=str(tmp_path / "nope.pem")))
    assert (missing.path, missing.message) == (
        "providers.vp.ca_file",
        "cannot read the CA bundle: No such file or directory",
    )
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    bad = error(doc(ca_file=str(junk)))
    assert bad.path == "providers.vp.ca_file" and "not a PEM bundle" in bad.message


def test_proxy_credentials_are_secrets_written_and_decoded() -> None:
    config = parse_config(doc(proxy="http://puser:p%40ss-word@proxy:3128"), NO_ENV)
    assert {"puser", "p%40ss-word", "p@ss-word"} <= set(config.secret_values())
