"""(being written) CLI for provenance.ledger."""
