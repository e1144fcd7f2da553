"""Data: file formats, named data sets and minibatches."""

from .datasets import DATASETS, Dataset, download, load_dataset, locate
from .formats import read_array_pickle, read_bytes, read_idx, read_npz, write_idx
from .loader import DataLoader

__all__ = ["DATASETS", "DataLoader", "Dataset", "download", "load_dataset", "locate", "read_array_pickle",
           "read_bytes", "read_idx", "read_npz", "write_idx"]
