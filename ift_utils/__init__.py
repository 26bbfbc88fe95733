"""ift_utils: the helpers behind the notebooks of the "Learning or Self-aligning?" replication kit."""

__version__ = "0.1.0"
