"""The pipeline: `Recommender`, the one object the app and the CLI call."""
from recdemo.pipeline.recommender import Recommender

__all__ = ["Recommender"]
