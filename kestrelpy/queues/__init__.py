"""Queue semantics: FIFO order, reliable reads, blocked readers, expiry and limits; never bytes."""
