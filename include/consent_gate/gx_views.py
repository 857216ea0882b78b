"""The Data Docs page views, each compiling GX's Jinja templates once per process.

GX's `DefaultJinjaView` makes a Jinja environment of its own for every view, and a site builds new
views at every `build_data_docs`: a run's two builds compiled the same templates 85 times (~0.5 CPU-s
of the checks' process, part of it after the last shard is done). These views are GX's, configured as
the site's views (`validation._Runner`), with one cache of compiled templates shared by all of them.
The pages are the ones GX renders; only the compiling is not repeated.

Imported by GX when it builds the site, after GX itself: nothing else imports this module.
"""

from __future__ import annotations

from typing import Any

import jinja2
from great_expectations.render.view import DefaultJinjaIndexPageView, DefaultJinjaPageView


class _CompiledTemplates(jinja2.BytecodeCache):
    """Compiled templates by name, in memory, for this process. Every view that uses it makes its
    environment the same way (GX's `DefaultJinjaView.__init__`), so a template compiles to the same code
    in each; Jinja checks each against its source's checksum before using it."""

    def __init__(self) -> None:
        self._compiled: dict[str, bytes] = {}

    def load_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        compiled = self._compiled.get(bucket.key)
        if compiled is not None:
            bucket.bytecode_from_string(compiled)

    def dump_bytecode(self, bucket: jinja2.bccache.Bucket) -> None:
        self._compiled[bucket.key] = bucket.bytecode_to_string()


COMPILED_TEMPLATES = _CompiledTemplates()


class _CompiledOnce:
    """A GX view whose environment takes its compiled templates from `COMPILED_TEMPLATES`."""

    env: jinja2.Environment

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.env.bytecode_cache = COMPILED_TEMPLATES


class PageView(_CompiledOnce, DefaultJinjaPageView):
    """GX's suite and validation pages."""


class IndexPageView(_CompiledOnce, DefaultJinjaIndexPageView):
    """GX's index page."""
