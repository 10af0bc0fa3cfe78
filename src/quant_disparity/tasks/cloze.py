"""UDHR article cloze: given the first half of an article, pick its true continuation among four.

Items are the held-out article ids every language has (:func:`.items.heldout_items`), so every language
answers the same items. For each item a seeded draw (``numpy.random.default_rng(seed)``, items in corpus order)
picks :data:`DISTRACTORS` other held-out articles; the prompt is the item's first half, the candidates are the
third quarter of the item (true) and of each distractor (the same language's text, cut the same way). Chance
is 1 / (1 + DISTRACTORS) = 25 %.

Each candidate is scored by its log-likelihood given the prompt, per UTF-8 byte of the candidate: tokenizers
split scripts into very different numbers of tokens, so a per-token normalisation would favour or penalise a
candidate by how its script tokenizes, while bytes are the same unit in every language (the audit's bits per
byte rests on the same argument). An item is answered correctly when the true continuation scores strictly
highest (a tie is wrong). Both arms are scored on the same batches (:func:`~quant_disparity.evaluate.score_documents`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..corpus import Corpus, Document
from ..evaluate import Forward, Prepared, Window, batch_windows, score_documents
from ..evaluate.batching import score_groups
from .base import ARMS, TASKS, LanguageItems, Metric, Task, TaskContext, TaskKind, TaskSettings
from .items import halves, heldout_items

#: Distractor continuations per item (chance = 1 / (DISTRACTORS + 1)).
DISTRACTORS = 3


def draw_items(items: Sequence[str], seed: int) -> dict[str, list[str]]:
    """item id -> its candidates' article ids, the true one first; the same for every language."""
    rng = np.random.default_rng(seed)
    out = {}
    for item in items:
        others = [i for i in items if i != item]
        picked = rng.choice(len(others), DISTRACTORS, replace=False)
        out[item] = [item, *(others[int(k)] for k in picked)]
    return out


class Cloze(Task):
    name = "cloze"
    headline = ("accuracy",)
    settings_used = ("seed",)
    metric_arms = {"accuracy": ARMS}
    chance = 1 / (DISTRACTORS + 1)
    description = (
        "UDHR article cloze: first half of a held-out article, its true third quarter among "
        f"{DISTRACTORS + 1} (distractors: other articles' third quarters, same language, seeded draw); "
        "log-likelihood per UTF-8 byte of the candidate; chance 25%"
    )

    def __init__(self, settings: TaskSettings):
        self.settings = settings

    def check(self, corpus: Corpus, langs: Sequence[str]) -> None:
        heldout_items(corpus, langs, self.name, least=DISTRACTORS + 1)

    def run(self, ctx: TaskContext) -> list[LanguageItems]:
        items = heldout_items(ctx.corpus, ctx.langs, self.name, least=DISTRACTORS + 1)
        draw = draw_items(items, self.settings.seed)
        tok: Any = ctx.lm.tokenizer  # a transformers tokenizer
        assert tok is not None, "tasks run with the tokenizer kept"
        prefix = ctx.lm.prefix_token_id
        max_len = ctx.lm.info.max_length
        windows: list[Window] = []
        docs: list[Document] = []
        for lang in ctx.langs:
            by_id = {d.id: d for d in ctx.corpus.documents(lang)}
            for item in items:
                prompt = halves(by_id[item])[0]
                p_ids = list(tok(prompt, add_special_tokens=False)["input_ids"])
                for cand in draw[item]:
                    cont = halves(by_id[cand])[1]
                    c_ids = list(tok(cont, add_special_tokens=False)["input_ids"])
                    pre = [] if prefix is None else [prefix]
                    room = (max_len or 10**9) - len(pre) - len(c_ids)
                    ids = pre + p_ids[-room:] if room < len(p_ids) else pre + p_ids
                    windows.append(Window(doc=len(docs), input_ids=tuple(ids + c_ids), n_scored=len(c_ids)))
                    docs.append(Document(lang, f"{item}:{cand}", cont))
        batches = batch_windows(windows, self.settings.batch_tokens)
        prepared = Prepared(
            docs=docs,
            n_tokens=[len(w.input_ids) for w in windows],
            n_pred=[w.n_scored for w in windows],
            batches=batches,
            groups=score_groups(batches, 1024),
            n_bytes=[d.n_bytes for d in docs],
        )
        try:
            scores = score_documents(
                Forward(ctx.lm.model),
                prepared,
                use_reference=ctx.arms.use_reference,
                use_model=ctx.arms.use_model,
            )
        finally:
            ctx.arms.engine.restore_()
        assert scores.nll_ref is not None
        k = DISTRACTORS + 1
        n_bytes = np.array(prepared.n_bytes, dtype=np.float64)
        per_byte = {"fp": -scores.nll_ref / n_bytes, "q": -scores.nll / n_bytes}  # log-likelihood per byte
        out = []
        for li, lang in enumerate(ctx.langs):
            correct = {}
            for arm, ll in per_byte.items():
                block = ll[li * len(items) * k : (li + 1) * len(items) * k].reshape(len(items), k)
                correct[arm] = (block[:, 0] > block[:, 1:].max(axis=1)).astype(np.float64)
            out.append(
                LanguageItems(
                    lang,
                    list(items),
                    {"accuracy": Metric(correct, description="share of items whose true continuation scores highest")},
                )
            )
        return out


TASKS.register(TaskKind("cloze", Cloze.description, lambda arg, settings: Cloze(settings)))
