"""Scheme kinds, one module each: the interface in :mod:`.base`, the built-in kinds beside it.

A module defines its :class:`~.base.Scheme` subclass (a frozen dataclass of the kind's options) and a
:class:`~.base.SchemeKind` entry named ``KIND`` that parses the kind's syntax. :mod:`..schemes` registers the
built-in ones; a third-party package names its entry in a ``quant_disparity.schemes`` entry point.
"""
