"""anonstream: real-time face anonymization for live camera feeds."""

__version__ = "0.1.0"
