"""HTML reports (one self-contained file, images inlined) and the `avec tour`."""

from .html import Report

__all__ = ["Report"]
