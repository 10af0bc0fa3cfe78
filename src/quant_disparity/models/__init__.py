"""Model loading (bundled aliases, Hugging Face ids and directories, GGUF files) and the module map."""

from .bundled import BUNDLED, DEFAULT_MODEL, BundledModel
from .loading import (
    DTYPES,
    LoadedModel,
    ModelInfo,
    ModelSource,
    cache_root,
    classify_source,
    load_model,
    load_tokenizer,
    parse_device,
    parse_dtype,
    prefix_token_of,
    release_memory,
    resolve_source,
    wrap_model,
)

__all__ = [
    "BUNDLED",
    "DEFAULT_MODEL",
    "DTYPES",
    "BundledModel",
    "LoadedModel",
    "ModelInfo",
    "ModelSource",
    "cache_root",
    "classify_source",
    "load_model",
    "load_tokenizer",
    "parse_device",
    "parse_dtype",
    "prefix_token_of",
    "release_memory",
    "resolve_source",
    "wrap_model",
]
