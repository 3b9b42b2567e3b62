"""(being written) CLI for provenance.sign."""
