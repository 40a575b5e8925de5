"""Datasets: loaders for image formats, defense/test splits and caching."""

from onp.data.types import DatasetMeta, ImageSet

__all__ = ["DatasetMeta", "ImageSet"]
