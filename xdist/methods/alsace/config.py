"""ALSACE's configuration sections live in :mod:`xdist.config` (every knob in one file); re-exported here."""

from xdist.config import AlsaceConfig, PairsConfig, SelectionConfig

__all__ = ["AlsaceConfig", "PairsConfig", "SelectionConfig"]
