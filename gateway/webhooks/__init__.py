"""Signed webhooks (Standard Webhooks): a durable outbox and the delivery loop.

Pure parts: :mod:`~gateway.webhooks.signing`, :mod:`~gateway.webhooks.targets`
(which URLs may be called), :mod:`~gateway.webhooks.retry` (backoff) and
:mod:`~gateway.webhooks.model`. Storage: :mod:`~gateway.webhooks.outbox`
(SQLite) and :mod:`~gateway.webhooks.redis_outbox`. I/O:
:mod:`~gateway.webhooks.dispatcher` and :mod:`~gateway.webhooks.service`.
"""
