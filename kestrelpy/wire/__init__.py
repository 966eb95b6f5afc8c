"""Wire protocols: bytes in, request values out; replies to bytes. No I/O, no queue logic."""
