"""pipewarden: load community diffusion pipelines without handing a stranger your machine.

Public API (everything else is internal and may change)::

    pipewarden.load_pipeline(weights, custom_pipeline=..., trust_remote_code=True, ...)
    pipewarden.Limits(...)
    pipewarden.sandbox.load_class(source, filename="pipeline.py")
    pipewarden.errors.*
"""

from __future__ import annotations

from pipewarden import errors
from pipewarden.errors import (
    IntegrityError,
    NotAllowedError,
    PipewardenError,
    PolicyViolation,
    ResourceLimitError,
    ScanError,
    SignatureError,
    TrustRequiredError,
)

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "errors",
    "load_pipeline",
    "Limits",
    "PipewardenError",
    "TrustRequiredError",
    "IntegrityError",
    "SignatureError",
    "NotAllowedError",
    "ScanError",
    "PolicyViolation",
    "ResourceLimitError",
]


def __getattr__(name: str):
    # Lazy: ``import pipewarden`` must not import torch (``pipewarden audit`` starts fast).
    if name == "load_pipeline":
        from pipewarden._api import load_pipeline

        return load_pipeline
    if name == "Limits":
        from pipewarden.limits import Limits

        return Limits
    raise AttributeError(f"module 'pipewarden' has no attribute {name!r}")
