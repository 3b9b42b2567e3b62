"""(being written) CLI for provenance.export."""
