"""What the simulated upstreams accept: credentials and knobs, with public demo defaults.

The defaults are deliberately public: they exist so that ``pollcast demo`` and
the tests can wire a gateway to the simulator without any secret. A real
deployment never points at the simulator.
"""

from __future__ import annotations

import msgspec

__all__ = ["SIM_CREDENTIALS", "SimConfig"]


class SimConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Credentials the simulator accepts and how it behaves.

    Attributes:
        ailab_api_key: value expected in the ``ailabapi-api-key`` header.
        aholo_app_key: the ``appkey`` query parameter.
        aholo_app_secret: the secret mixed into aholo's md5 ``sign``.
        aholo_appuid: the ``appuid`` query parameter.
        aholo_visible_after_s: default delay before a new aholo task shows up
            in ``list/by-ids`` (the doc warns an id may not be visible yet).
        aholo_timestamp_tolerance_s: how far ``timestamp`` may be from now.
        tryon_open_id: the ``openId`` body field.
        tryon_api_key: the ``apiKey`` body field.
        tryon_balance: starting coins; every authenticated call costs 0.1.
        genpic_public_key: the ``PublicKey`` body field.
        genpic_private_key: the key appended to genpic's sha1 ``Signature``.
        timeout_hold_s: how long a request hit by the ``timeout`` fault is
            held open (unless the client gives up first).
        seed: seed of the random source (fault dice, generated ids); ``None``
            seeds from the OS.
    """

    ailab_api_key: str = "sim-ailab-key"
    aholo_app_key: str = "sim-aholo-app"
    aholo_app_secret: str = "sim-aholo-secret"
    aholo_appuid: str = "sim-user"
    aholo_visible_after_s: float = 0.0
    aholo_timestamp_tolerance_s: float = 300.0
    tryon_open_id: str = "sim-open-id"
    tryon_api_key: str = "sim-tryon-key"
    tryon_balance: float = 1000.0
    genpic_public_key: str = "sim-genpic-public"
    genpic_private_key: str = "sim-genpic-private"
    timeout_hold_s: float = 60.0
    seed: int | None = None

    def provider_credentials(self, sim_base_url: str) -> dict[str, dict[str, str]]:
        """Per provider kind, the credential entries of a gateway provider table.

        ``sim_base_url`` is the simulator's root (``http://127.0.0.1:8001``);
        each provider's ``base_url`` is its path prefix under it. The keys are
        the adapters' ``Settings`` field names.
        """
        root = sim_base_url.rstrip("/")
        return {
            "ailab": {"base_url": f"{root}/ailab", "api_key": self.ailab_api_key},
            "aholo": {
                "base_url": f"{root}/aholo",
                "app_key": self.aholo_app_key,
                "app_secret": self.aholo_app_secret,
                "appuid": self.aholo_appuid,
            },
            "tryon": {
                "base_url": f"{root}/tryon",
                "open_id": self.tryon_open_id,
                "api_key": self.tryon_api_key,
                "oss_base": f"{root}/tryon/oss/",
            },
            "genpic": {
                "base_url": f"{root}/genpic",
                "public_key": self.genpic_public_key,
                "private_key": self.genpic_private_key,
            },
            "videoproc": {"base_url": f"{root}/videoproc"},
        }


SIM_CREDENTIALS = SimConfig()
"""The simulator's default (public, demo-only) credentials."""
