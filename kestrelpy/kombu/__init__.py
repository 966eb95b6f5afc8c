"""kestrelpy as a kombu (and so Celery) broker: ``kestrelpy://host:22133//``.

kombu finds transports only in its own alias table (it has no plugin entry points), so
importing this package adds ``kestrelpy`` there: a Celery app module does
``import kestrelpy.kombu`` before it names the broker. See docs/celery.md.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES

TRANSPORT = "kestrelpy.kombu.transport:Transport"
TRANSPORT_ALIASES.setdefault("kestrelpy", TRANSPORT)

__all__ = ["TRANSPORT"]
