"""A plugin module that fails on import (tests/test_registry.py: a broken plugin is one clear error line)."""

raise ImportError("this plugin needs a package that is not installed")
