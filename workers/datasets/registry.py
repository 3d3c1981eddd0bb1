"""The datasets registry (name -> loader instance); names equal ``workers.catalog.DATASETS``."""

from workers.datasets.base import DatasetLoader
from workers.registry import Registry

DATASETS: Registry[DatasetLoader] = Registry("dataset")
