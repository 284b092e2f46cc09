from tests.redis_cluster import redis_cluster  # noqa: F401 (a fixture, shared)
from tests.redis_server import redis_server  # noqa: F401 (a fixture, shared)
