"""distkg: distilling temporal knowledge graph reasoning into tiny students (arXiv 2601.00202)."""

from distkg.allocator import apply_heap_settings

__version__ = "0.1.0"

apply_heap_settings()  # before any [batch, entities] tensor exists (distkg.allocator says why)
