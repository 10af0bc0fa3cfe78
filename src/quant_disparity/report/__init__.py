"""Reports of stored results: markdown and terminal tables."""

from .tables import audit_markdown, audit_rich_table, fmt, markdown_table

__all__ = ["audit_markdown", "audit_rich_table", "fmt", "markdown_table"]
