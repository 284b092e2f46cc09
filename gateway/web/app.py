"""The Litestar application: wiring only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig

from gateway.config import Config
from gateway.hub.base import Hub
from gateway.service import Gateway
from gateway.web.asyncapi import asyncapi_json
from gateway.web.auth import Authenticator, provide_principal
from gateway.web.dashboard import DASHBOARD_ROUTES
from gateway.web.errors import EXCEPTION_HANDLERS, GatewayRequest
from gateway.web.limits import Limits
from gateway.web.routes import ROUTES
from gateway.web.ws import ws_endpoint

__all__ = ["create_app"]


def create_app(config: Config, *, hub: Hub | None = None) -> Litestar:
    """Build the app; the gateway starts and stops with the app's lifespan."""
    gateway = Gateway(config, hub=hub)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            gateway.drain()
            await gateway.close()

    app = Litestar(
        route_handlers=[*ROUTES, ws_endpoint, *DASHBOARD_ROUTES, asyncapi_json],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,
        # Handlers that take a ``principal`` are authenticated (gateway/web/auth.py).
        dependencies={"principal": Provide(provide_principal)},
        request_max_body_size=config.server.max_body_bytes,
        request_class=GatewayRequest,
        openapi_config=OpenAPIConfig(title="pollcast", version="1"),
        cors_config=(
            CORSConfig(allow_origins=config.server.cors_origins, allow_credentials=True)
            if config.server.cors_origins
            else None
        ),
        debug=False,
        logging_config=None,
    )
    app.state.gateway = gateway
    app.state.auth = Authenticator(config.auth)
    # With the Redis backend the per-principal limits hold for the cluster.
    app.state.limits = Limits(config, redis=gateway.redis)
    return app
