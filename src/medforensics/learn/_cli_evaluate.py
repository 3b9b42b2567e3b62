"""(being written) CLI: medforensics evaluate."""
