"""Test doubles: the Ollama stand-in, its release builder and the local mirror.

Nothing here is shipped or used by labctl itself.
"""

from .mirror import OllamaMirror, prepare_mirror
from .release import (
    DEFAULT_MODEL_BYTES,
    DEFAULT_VERSION,
    DOUBLE_SOURCE,
    PublishedModel,
    Release,
    build_release,
    publish_model,
)

__all__ = [
    "DEFAULT_MODEL_BYTES",
    "DEFAULT_VERSION",
    "DOUBLE_SOURCE",
    "OllamaMirror",
    "PublishedModel",
    "Release",
    "build_release",
    "prepare_mirror",
    "publish_model",
]
