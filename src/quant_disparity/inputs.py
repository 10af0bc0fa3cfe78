"""What an audit and a locate sweep start from: the checks that need no model, then the model, its module map,
and the selected documents cut into batches (:func:`load_inputs`)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass

from .config import ModelRuntime
from .corpus import Corpus, CorpusSelection, Selection, filter_split, open_corpus, select_documents
from .corpus.selection import resolve_langs
from .errors import UserError
from .evaluate import EvalSettings, Prepared, prepare, tokenize
from .models import LoadedModel, classify_source, load_model, parse_device, parse_dtype
from .models.modules import ModuleMap, build_module_map


def check_model_and_corpus(runtime: ModelRuntime, selection: CorpusSelection) -> tuple[Corpus, list[str]]:
    """Dtype, device and model name, then the corpus and its languages (each with documents in the split);
    raises :class:`UserError`. Returns the corpus and the corpus keys of the languages."""
    parse_dtype(runtime.dtype)
    parse_device(runtime.device)
    classify_source(runtime.model)
    corpus = open_corpus(selection)
    langs = resolve_langs(corpus, selection.langs)
    for lang in langs:
        if not filter_split(corpus.documents(lang), selection.split):
            raise UserError(f"{lang} has no documents in split {selection.split!r}", "use --split all")
    return corpus, langs


@dataclass
class Inputs:
    """A loaded model, its module map, and the documents selected and prepared for it."""

    lm: LoadedModel
    modmap: ModuleMap
    selection: Selection
    prepared: Prepared
    loaded_at: float  # time.perf_counter() once the model was loaded


def load_inputs(
    runtime: ModelRuntime,
    corpus: Corpus,
    selection: CorpusSelection,
    settings: EvalSettings,
    *,
    lm: LoadedModel | None = None,
    log: Callable[[str], None] = lambda msg: None,
) -> Inputs:
    """Load the model (unless ``lm`` is given; its name must match), map its modules, select and prepare the
    documents. A model loaded here drops its tokenizer once every document is tokenized."""
    own_model = lm is None
    if own_model:
        lm = load_model(runtime.model, device=runtime.device, dtype=runtime.dtype, log=log)
    assert lm is not None  # given or loaded above
    loaded_at = time.perf_counter()
    modmap = build_module_map(lm.model)
    chosen = select_documents(corpus, selection, functools.partial(tokenize, lm.tokenizer))
    prepared = prepare(
        chosen.documents(),
        chosen.all_tokens(),
        lm.prefix_token_id,
        settings,
        lm.info.max_length,
        tokenizer=lm.tokenizer,
    )
    if own_model:
        lm.drop_tokenizer()
    return Inputs(lm=lm, modmap=modmap, selection=chosen, prepared=prepared, loaded_at=loaded_at)
