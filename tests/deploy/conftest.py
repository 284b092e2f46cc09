from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    # trust_env=False: a proxy from the environment must not sit between the
    # test and the local nginx or gateway.
    async with httpx.AsyncClient(timeout=30, trust_env=False) as c:
        yield c
