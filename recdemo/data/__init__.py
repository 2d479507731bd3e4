"""Datasets: reading layouts, validation, catalog, sequences and the leave-one-out split."""
from .catalog import Catalog, clean_title, normalize_title
from .dataset import BUILTIN_FOLDERS, Dataset, EvalCase, build_dataset, load_dataset, load_from_config
from .errors import DataError
from .upload import load_uploaded

__all__ = ["Catalog", "clean_title", "normalize_title", "BUILTIN_FOLDERS", "Dataset", "EvalCase",
           "build_dataset", "load_dataset", "load_from_config", "DataError", "load_uploaded"]
