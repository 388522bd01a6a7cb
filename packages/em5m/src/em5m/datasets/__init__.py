"""The reference EM datasets of the shared data folder, with splits, labels, licences and citations.

Data is found through ``EMSSL_DATA`` (see `em5m.datasets.download` for the full search order) and
never copied into the repository. Each dataset is one module (``isbi2012``, ``lucchi_pp``,
``drosophila_vnc``, ``flyem_medulla``, ``gala``, ``emdiffuse``, ``omniem_examples``).

Examples:
    >>> from em5m import datasets
    >>> datasets.list_datasets()  # doctest: +NORMALIZE_WHITESPACE
    ['drosophila_vnc', 'emdiffuse', 'flyem_medulla', 'gala', 'isbi2012', 'lucchi_pp',
     'omniem_examples']
    >>> datasets.info("isbi2012").split_names
    ('train', 'val', 'all_labelled', 'test')
    >>> ds = datasets.load("lucchi_pp", split="val")  # doctest: +SKIP
    >>> ds.image.shape, ds.labels["mitochondria"].dtype, ds.voxel_size  # doctest: +SKIP
    ((33, 768, 1024), dtype('bool'), (5.0, 5.0, 5.0))
"""

from __future__ import annotations

from em5m.datasets.base import DatasetInfo, EMDataset, LabelInfo, Source, SplitData, SplitInfo
from em5m.datasets.download import cache_root, data_root
from em5m.datasets.registry import fetch, info, list_datasets, load, register, unregister

__all__ = [
    "DatasetInfo",
    "EMDataset",
    "LabelInfo",
    "Source",
    "SplitData",
    "SplitInfo",
    "cache_root",
    "data_root",
    "fetch",
    "info",
    "list_datasets",
    "load",
    "register",
    "unregister",
]
