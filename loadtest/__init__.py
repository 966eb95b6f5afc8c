"""Kestrel-style load tools for kestrelpy, memcached or any Kestrel (memcache text protocol).

Each tool is a module run as ``python -m loadtest.NAME --server HOST:PORT [--json]``; see
``loadtest/README.md``. Shared pieces live in the underscore modules.
"""
