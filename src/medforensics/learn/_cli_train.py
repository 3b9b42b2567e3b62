"""(being written) CLI: medforensics train."""
