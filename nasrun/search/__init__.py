"""Search strategies: one module per strategy, each returning a ``SearchResult``."""
