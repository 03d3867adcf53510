"""The hash-chained audit log and the compliance report rendered from it."""
