"""Group commit: staged batches, the scheduler committing them, its contract with connections."""

from kestrelpy.commits.gate import CommitGate, CommitListener

__all__ = ["CommitGate", "CommitListener"]
