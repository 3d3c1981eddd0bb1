"""The datasets registry (name -> loader instance); names equal ``workers.contract.catalog.DATASETS``."""

from workers.contract.registry import Registry
from workers.datasets.base import DatasetLoader

DATASETS: Registry[DatasetLoader] = Registry("dataset")
