"""Durable storage: LMDB access (``lmdb_store``) and the on-disk layout (``layout``)."""
