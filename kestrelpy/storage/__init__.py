"""Durable storage, the only package that imports ``lmdb``: the server's store
(``lmdb_store``, with its on-disk layout in ``layout``) and the multi-process queues of the
router's ``local`` backend (``shared_queues``)."""
