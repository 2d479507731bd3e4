"""Datasets: reading layouts, validation, catalog, sequences and the leave-one-out split."""
from recdemo.data.catalog import Catalog, clean_title, normalize_title
from recdemo.data.dataset import BUILTIN_FOLDERS, Dataset, EvalCase, build_dataset, load_dataset, load_from_config
from recdemo.errors import DataError

__all__ = ["Catalog", "clean_title", "normalize_title", "BUILTIN_FOLDERS", "Dataset", "EvalCase",
           "build_dataset", "load_dataset", "load_from_config", "DataError"]
