"""Generation fidelity: greedy continuations of held-out prompts, full precision against quantized.

The prompts are the first halves of the held-out articles (:mod:`.items`), the same articles in every language.
Each arm continues each prompt greedily (no sampling: deterministic) for at most ``gen_tokens`` tokens (stopping
at the end-of-sequence token), in left-padded batches of similar length. Per item:

- ``prefix_match``: tokens of the longest common prefix of the two continuations (q against fp);
- ``chrf``: chrF (sacrebleu, 0-100) of the quantized continuation against the reference's;
- ``fidelity``: per arm, the share of the continuation's letters written in the prompt's script
  (:func:`~quant_disparity.corpus.scripts.script_share`), summed over items (a ratio of sums), so its Δ shows a
  model that drifts into another script (often English).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..corpus import Corpus
from ..corpus.scripts import detect_script, script_share
from ..errors import UserError
from .base import ARMS, TASKS, LanguageItems, Metric, Task, TaskContext, TaskKind, TaskSettings
from .items import halves, heldout_items

SACREBLEU_INSTALL = "pip install 'quant-disparity[tasks]'"


def greedy(
    model: torch.nn.Module, prompts: Sequence[list[int]], n_new: int, eos: int | None, pad: int, batch_tokens: int
):
    """Greedy continuations (token ids, cut after the first ``eos``) of ``prompts``, batched by length."""
    order = sorted(range(len(prompts)), key=lambda i: (-len(prompts[i]), i))
    out: list[list[int]] = [[] for _ in prompts]
    device = next(model.parameters()).device
    i = 0
    while i < len(order):
        longest = len(prompts[order[i]]) + n_new
        size = max(1, batch_tokens // longest)
        chunk = order[i : i + size]
        i += size
        L = max(len(prompts[j]) for j in chunk)
        ids = torch.full((len(chunk), L), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), L), dtype=torch.long)
        for r, j in enumerate(chunk):
            p = prompts[j]
            ids[r, L - len(p) :] = torch.tensor(p)
            mask[r, L - len(p) :] = 1
        with torch.inference_mode():
            gen = model.generate(  # type: ignore[operator]  # nn.Module.__getattr__ is typed Tensor | Module
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=n_new,
                min_new_tokens=0,
                do_sample=False,
                num_beams=1,
                top_k=None,
                top_p=None,
                temperature=None,
                pad_token_id=pad,
                eos_token_id=eos,
            )
        for r, j in enumerate(chunk):
            toks = gen[r, L:].tolist()
            if eos is not None and eos in toks:
                toks = toks[: toks.index(eos) + 1]
            out[j] = toks
    return out


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class Generate(Task):
    name = "generate"
    headline = ("fidelity", "chrf", "prefix_match")
    settings_used = ("gen_tokens",)
    metric_arms = {"fidelity": ARMS, "chrf": ("q",), "prefix_match": ("q",)}
    description = (
        "greedy continuations of held-out article first halves: shared token prefix and chrF of the quantized "
        "continuation against the reference's, and the share of generated letters in the prompt's script"
    )

    def __init__(self, settings: TaskSettings):
        self.settings = settings

    def check(self, corpus: Corpus, langs: Sequence[str]) -> None:
        try:
            import sacrebleu  # noqa: F401
        except ImportError:
            raise UserError(
                "task 'generate' needs sacrebleu (chrF), which is not installed", SACREBLEU_INSTALL
            ) from None
        heldout_items(corpus, langs, self.name)

    def run(self, ctx: TaskContext) -> list[LanguageItems]:
        import sacrebleu

        items = heldout_items(ctx.corpus, ctx.langs, self.name)
        tok: Any = ctx.lm.tokenizer  # a transformers tokenizer
        assert tok is not None, "tasks run with the tokenizer kept"
        prefix = ctx.lm.prefix_token_id
        eos = getattr(tok, "eos_token_id", None)
        pad = getattr(tok, "pad_token_id", None)
        pad = pad if pad is not None else (eos if eos is not None else 0)
        n_new = self.settings.gen_tokens
        prompts, texts = [], []
        for lang in ctx.langs:
            by_id = {d.id: d for d in ctx.corpus.documents(lang)}
            for item in items:
                text = halves(by_id[item])[0]
                ids = list(tok(text, add_special_tokens=False)["input_ids"])
                prompts.append(([] if prefix is None else [prefix]) + ids)
                texts.append(text)
        gens = ctx.arms.each(lambda: greedy(ctx.lm.model, prompts, n_new, eos, pad, max(self.settings.batch_tokens, 1)))
        decoded = {arm: [tok.decode(g, skip_special_tokens=True) for g in gens[arm]] for arm in gens}
        out = []
        n = len(items)
        for li, lang in enumerate(ctx.langs):
            sl = range(li * n, (li + 1) * n)
            script = detect_script(texts[k] for k in sl)
            shares = {arm: [script_share(decoded[arm][k], script) for k in sl] for arm in decoded}
            match = np.array([common_prefix(gens["fp"][k], gens["q"][k]) for k in sl], dtype=np.float64)
            chrf = np.array(
                [
                    100.0
                    if not decoded["fp"][k] and not decoded["q"][k]
                    else sacrebleu.sentence_chrf(decoded["q"][k], [decoded["fp"][k]]).score
                    for k in sl
                ]
            )
            metrics = {
                "fidelity": Metric(
                    {a: np.array([s[0] for s in shares[a]], dtype=np.float64) for a in shares},
                    {a: np.array([s[1] for s in shares[a]], dtype=np.float64) for a in shares},
                    description=f"share of generated letters in the prompt's script ({script})",
                ),
                "chrf": Metric({"q": chrf}, description="chrF of the quantized continuation against the reference's"),
                "prefix_match": Metric(
                    {"q": match}, description="tokens of the shared prefix of the two continuations"
                ),
            }
            examples = [
                {"item": items[0], "prompt": texts[sl[0]], "fp": decoded["fp"][sl[0]], "q": decoded["q"][sl[0]]}
            ]
            out.append(LanguageItems(lang, list(items), metrics, examples))
        return out


TASKS.register(TaskKind("generate", Generate.description, lambda arg, settings: Generate(settings)))
