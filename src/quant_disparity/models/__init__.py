"""Model loading (bundled aliases, Hugging Face ids and directories, GGUF files) and the module map."""

from .bundled import BUNDLED, DEFAULT_MODEL, BundledModel
from .loading import (
    DTYPES, LoadedModel, ModelInfo, cache_root, classify_source, load_model, parse_device, parse_dtype,
    wrap_model,
)

__all__ = [
    "BUNDLED", "DEFAULT_MODEL", "DTYPES", "BundledModel", "LoadedModel", "ModelInfo", "cache_root",
    "classify_source", "load_model", "parse_device", "parse_dtype", "wrap_model",
]
