"""cnnsearch: cross-validated hyperparameter search for convolutional image classifiers."""

from cnnsearch.errors import CnnSearchError

__version__ = "0.1.0"
__all__ = ["CnnSearchError", "__version__"]
