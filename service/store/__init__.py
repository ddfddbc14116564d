"""Decision stores: SQLite (embedded, one file) and Redis (shared by replicas), one interface.

``open_store(settings)`` picks one from the settings: ``store: sqlite`` (default) keeps
everything in ``store_path``; ``store: redis`` uses ``redis_url`` with a local SQLite spool
that keeps every decision while Redis is unreachable.
"""

from service.store.base import (
    CONFIDENCE_BINS,
    Bucket,
    DecisionStore,
    Feedback,
    StoreError,
    UnknownDecisionError,
    cache_key,
    new_decision_id,
    normalize_question,
)
from service.store.redis_store import RedisStore
from service.store.resilient import ResilientStore
from service.store.sqlite import SqliteStore

__all__ = [
    "CONFIDENCE_BINS",
    "Bucket",
    "DecisionStore",
    "Feedback",
    "RedisStore",
    "ResilientStore",
    "SqliteStore",
    "StoreError",
    "UnknownDecisionError",
    "cache_key",
    "new_decision_id",
    "normalize_question",
]
