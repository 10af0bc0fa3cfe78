"""Report formats of the ``report`` command: a registry of renderers of a study's analysed results.

Third-party formats come from ``quant_disparity.report_formats`` entry points.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..registry import Registry


@dataclass(frozen=True)
class ReportFormat:
    """A registry entry: ``render(result, store_info)`` is the report's text (``result`` from
    ``experiments.analyse``, ``store_info`` a few facts about the store for the provenance section)."""

    name: str
    suffix: str  # of the default output file, report.<suffix>
    help: str
    render: Callable[[dict, dict], str]


def _html(result: dict, store_info: dict) -> str:
    from ..provenance import environment
    from .experiment import html_report

    return html_report(result, environment(), store_info)


def _markdown(result: dict, store_info: dict) -> str:
    from .experiment import summary_markdown

    return summary_markdown(result)


def _latex(result: dict, store_info: dict) -> str:
    from .experiment import latex_report

    return latex_report(result)


def _hint(registry: Registry[ReportFormat]) -> str:
    return f"formats: {'; '.join(f'{f.name} ({f.help})' for f in registry.values())}"


FORMATS: Registry[ReportFormat] = Registry(
    "report format", ReportFormat, group="quant_disparity.report_formats", hint=_hint
)
for _format in (
    ReportFormat("html", "html", "a self-contained page with figures and the run's provenance", _html),
    ReportFormat("md", "md", "the markdown summary", _markdown),
    ReportFormat("latex", "tex", "LaTeX (booktabs) tables", _latex),
):
    FORMATS.register(_format)
