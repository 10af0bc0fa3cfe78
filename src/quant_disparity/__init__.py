"""quant-disparity: measure and fix how LLM weight quantization hurts some languages more than others.

The public API (stable names):

- :func:`quant_disparity.models.load_model` — bundled alias, Hugging Face id/dir or ``.gguf`` path.
- :func:`quant_disparity.corpus.load_corpus` — bundled UDHR or a user corpus (JSONL, txt dir, FLORES dir).
- :func:`quant_disparity.quant.parse_scheme` — ``w4g128``, ``w8-channel``, ``gguf:q4_0`` ...
- :func:`quant_disparity.audit.run_audit` — the whole audit; returns an :class:`AuditResult`.
"""

__version__ = "0.1.0"
