"""One-shot search: the engine (``engine.py``: the loop, ``network.py``: the supernet with its
architecture parameters) and one file per method that plugs into it."""
