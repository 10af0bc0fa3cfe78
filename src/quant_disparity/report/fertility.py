"""Tokenizer fertility in an audit's tables: per language tokens per byte and per word, and the correlation of the
damage with them (:mod:`..analysis.fertility`). An audit.json written before fertility was measured has none:
every function here then gives nothing, and the tables look as they did.

:mod:`.tables` calls these and hands them its formatting functions (this module does not import it)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from ..analysis.records import LanguageRow

#: The terminal table's columns.
COLUMNS = ("tok/byte", "tok/word")
#: Not applicable: a script without separators between words has no tokens per word.
NOT_APPLICABLE = "n/a"


def has_fertility(result: Mapping) -> bool:
    return "fertility" in result.get("summary", {})


def cells(row: LanguageRow) -> list[str]:
    """Tokens per byte and per word of one language (``n/a`` where the script separates no words)."""
    f = row.fertility or {}
    tpb, tpw = f.get("tokens_per_byte"), f.get("tokens_per_word")
    return [
        "—" if tpb is None else f"{tpb:.3f}",
        NOT_APPLICABLE if f.get("words", 0) is None else "—" if tpw is None else f"{tpw:.2f}",
    ]


def summary_lines(result: Mapping, fmt: Callable[..., str]) -> list[str]:
    """One line per fertility measure: its Spearman correlation with relative Δbpb across languages
    (``fmt``: :func:`.tables.fmt`)."""
    if not has_fertility(result):
        return []
    s = result["summary"]["fertility"]
    lines = []
    for measure in ("tokens_per_byte", "tokens_per_word"):
        c = s.get(measure)
        if c is None:
            continue
        left_out = (
            f"; not applicable to {', '.join(s['not_applicable'])}"
            if measure == "tokens_per_word" and s.get("not_applicable")
            else ""
        )
        lines.append(
            f"Spearman correlation of relative Δbpb with {c['description']}, {c['n_languages']} languages: "
            f"{fmt(c['spearman'], 2)}"
            + (f" ({c['spearman']['note']})" if c["spearman"].get("note") else "")
            + left_out
            + "."
        )
    return lines


def markdown_section(
    result: Mapping, languages: Sequence[LanguageRow], markdown_table: Callable[..., str]
) -> list[str]:
    """The audit.md section: a table of both measures for ``languages`` (in that order), and what they count
    (``markdown_table``: :func:`.tables.markdown_table`)."""
    if not has_fertility(result):
        return []
    rows = [
        [f"{r.lang} ({r.name})", str(r.info.get("script", "")), f"{(r.fertility or {}).get('tokens', '—')}", *cells(r)]
        for r in languages
    ]
    return [
        "## Tokenizer fertility",
        "",
        "Tokens of the tokenizer (no BOS/EOS) per UTF-8 byte and per word of the scored documents (sums over them). "
        "A word is a run between whitespace or the Ethiopic wordspace (፡) holding a letter or digit; "
        f"{NOT_APPLICABLE}: a script written without spaces between words "
        f"({', '.join(result['summary']['fertility'].get('scripts_without_word_separators', []))}).",
        "",
        markdown_table(["language", "script", "tokens", "tokens/byte", "tokens/word"], rows),
        "",
    ]
