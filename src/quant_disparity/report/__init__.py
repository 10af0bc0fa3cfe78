"""Reports of stored results: markdown and terminal tables, and the ``report`` command's formats."""

from .formats import FORMATS, ReportFormat
from .tables import audit_markdown, audit_rich_table, fmt, markdown_table

__all__ = ["FORMATS", "ReportFormat", "audit_markdown", "audit_rich_table", "fmt", "markdown_table"]
