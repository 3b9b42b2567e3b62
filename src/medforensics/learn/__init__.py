"""Learned models: checkpoints (safetensors with a model card), and the networks built on them."""
from .checkpoint import load_checkpoint, save_checkpoint

__all__ = ["load_checkpoint", "save_checkpoint"]
