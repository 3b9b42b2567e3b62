"""(being written) CLI for provenance.watermark."""
