"""forge commands (being written)."""
from .cli import forge_app  # noqa: F401
