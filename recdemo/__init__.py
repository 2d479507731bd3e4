"""recdemo: an explainable LLM recommender (see docs/ARCHITECTURE.md)."""
from recdemo.config import set_openmp_defaults

set_openmp_defaults()  # before anything loads torch (and with it OpenMP): see config.OPENMP_DEFAULTS
