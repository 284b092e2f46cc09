"""Declarative providers: ``kind = "http"``, an upstream described entirely in ``pollcast.toml``.

For a status API whose calls need no code — a URL template, some headers or
query keys, a JSON body, a signature — and whose replies hold each task's status in a
field. Everything is data: templates use a fixed set of placeholders,
:mod:`~gateway.providers.fieldpath` paths say where values are, and
:mod:`~gateway.providers.conditions` say when a reply is an API error.
Nothing in the configuration is executed — signatures included: ``request.sign``
declares them as data (:mod:`~gateway.providers.signing`).

The provider table (``[providers.NAME]``)::

    kind = "http"
    base_url = "https://api.example.com"     # {base} in templates
    cost_per_call = 0.0                      # optional; with budget_per_hour
    interval_s = 5                           # + any policy key (interval_s, batch_size…)

    [providers.NAME.secrets]                 # {secrets.NAME} in templates (not in the URL path)
    app_secret = "${APP_SECRET}"

    [providers.NAME.request]
    method = "GET"                           # GET | POST | PUT
    url = "{base}/status/{task_id}"          # {task_id} is percent-encoded here
    headers = { "x-api-key" = "${KEY}" }
    query = { id = "{task_id}" }
    json = { task_id = "{task_id}" }         # or body = "raw {task_id}"; POST/PUT only
    batch = { mode = "json", size = 50 }     # ids as a JSON array ("{task_ids}" leaf, or
                                             # the whole body); or mode = "query", param = "ids"

    [providers.NAME.request.sign]            # see gateway/providers/signing.py
    algorithm = "md5"                        # md5 | sha1 | sha256 | hmac-sha256 (with key = …)
    text = "{secrets.app_secret}{now_ms}"    # or sorted_params = "json" | "query" (+ suffix…)
    into = { query = "sign" }                # or { json = "Signature" }, { header = "X-Sign" }

    [providers.NAME.reply]
    tasks = "$"                              # where the task object(s) are; "d[*]" for a batch
    id = "taskId"                            # batch: the id inside each task object
    not_found = [404]                        # HTTP statuses meaning "no such task"

    [providers.NAME.map]                     # paths inside each task object
    state = { path = "status", values = { done = "succeeded", … } }
                                             # + rules = [{ when = "…", state = "…" }] tried first,
                                             #   messages / errors = { value = … } literals
    progress = "progress"                    # 0–100, clamped and rounded
    position = "queue.position"
    position_in = ["queued"]                 # optional: the states position is read in
    message = "message"
    upstream = { status = "status" }         # raw fields shown on events
    result = { urls = "result[*]", files = "files", base_url = "{base}", meta = { … } }
    error = { code = "error.code", message = ["error", "message"] }

    [providers.NAME.api_error]               # conditions on the whole reply
    when = "error_code != 0"
    code = "error_detail.code"
    message = ["error_detail.message", "error_msg"]
    auth = "error_code in [401, 403]"        # → non-retryable auth fault
    rate_limited = "error_code == 429"       # → rate_limited fault (honours Retry-After)
    not_found = "error_code == 404"          # → the task is unknown upstream
    task = "error_code < 500"                # → the task itself ends in task_state
    task_state = "failed"
    upstream = { error_code = "error_code" }

Placeholders: ``{base}`` (``base_url`` without its trailing slash),
``{task_id}``, ``{now_ms}``, ``{request_id}``, ``{secrets.NAME}``;
``{task_ids}`` only as a whole ``json`` leaf of a batch request and
``{task_id:int}`` only as a whole ``json`` leaf (the id as a JSON integer;
then only ids of 1–19 digits up to 2^63-1 are accepted); ``{{`` and ``}}``
are literal braces.
``${ENV}`` is the configuration loader's and is resolved first.

Wherever a path is expected, a list of paths may be given: the first one
that holds a value (not null, not an empty string) wins.

Every value of ``secrets``, every header, query and body value with literal
text (after removing placeholders), a literal ``sign.key`` and literal text of
8 characters or more in ``sign.text``/``prefix``/``suffix`` count as
credentials — they are scrubbed from messages and never printed — except the
values of ``Content-Type``, ``Accept``, ``Accept-Encoding``,
``Accept-Language``, ``Cache-Control`` and ``User-Agent``.
"""

from gateway.providers.declarative.adapter import DeclarativeAdapter
from gateway.providers.declarative.settings import (
    ApiErrorMapping,
    BatchSettings,
    DeclarativeSettings,
    FieldMapping,
    ReplySettings,
    RequestSettings,
    ResultMapping,
    StateMapping,
)

__all__ = [
    "ApiErrorMapping",
    "BatchSettings",
    "DeclarativeAdapter",
    "DeclarativeSettings",
    "FieldMapping",
    "ReplySettings",
    "RequestSettings",
    "ResultMapping",
    "StateMapping",
]
