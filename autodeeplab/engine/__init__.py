"""Engines: the loops that search, train and evaluate, driven by a config dataclass."""

from autodeeplab.engine.loop import NonFiniteLossError
from autodeeplab.engine.search import SearchEngine, SearchResult, run_search

__all__ = ["NonFiniteLossError", "SearchEngine", "SearchResult", "run_search"]
