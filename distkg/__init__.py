"""distkg: distilling temporal knowledge graph reasoning into tiny students (arXiv 2601.00202)."""

__version__ = "0.1.0"
