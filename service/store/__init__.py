"""Decision stores: SQLite (embedded, one file) and Redis (shared by replicas), one interface.

``open_store(settings)`` picks one from the settings: ``store: sqlite`` (default) keeps
everything in ``store_path``; ``store: redis`` uses ``redis_url`` with a local SQLite spool
that keeps every decision while Redis is unreachable.
"""

from service.settings import ServiceSettings
from service.store.base import (
    CONFIDENCE_BINS,
    Bucket,
    DecisionStore,
    Feedback,
    Labelled,
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
    "Labelled",
    "RedisStore",
    "ResilientStore",
    "SqliteStore",
    "StoreError",
    "UnknownDecisionError",
    "cache_key",
    "new_decision_id",
    "normalize_question",
    "open_store",
]


def open_store(settings: ServiceSettings) -> DecisionStore:
    """The store the settings name (see the module's docstring)."""
    spool_or_file = SqliteStore(settings.resolved_store_path())
    if settings.store == "sqlite":
        return spool_or_file
    assert settings.redis_url is not None  # the settings check it
    return ResilientStore(RedisStore(settings.redis_url), spool_or_file)
