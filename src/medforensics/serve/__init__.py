"""The review service: ``medforensics serve`` (docs/serve.md)."""
