"""The Celery app the integration tests run workers of (see tasks.py)."""
