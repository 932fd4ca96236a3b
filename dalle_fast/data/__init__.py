"""Data: the built-in procedural ``shapes`` dataset (DESIGN section 6).

``ShapesDataset(split, image_size)[i] -> (image (3, S, S) in [0, 1], caption)``; ``attributes``
gives the record behind sample i, ``read_attributes`` reads an image back into one and
``caption_attributes`` parses a caption into one.
"""
from ..config import DEFAULT_HOLDOUT
from .shapes import ShapesDataset, attributes, check_holdout
from .shapes_draw import read_attributes, render
from .shapes_spec import COLORS, POSITIONS, SHAPES, SIZES, Attributes, caption, caption_attributes

__all__ = [
    "DEFAULT_HOLDOUT", "ShapesDataset", "attributes", "check_holdout", "read_attributes", "render",
    "COLORS", "POSITIONS", "SHAPES", "SIZES", "Attributes", "caption", "caption_attributes",
]

# User data (DESIGN section 7): a folder of captioned images, a COCO-style captions file, or a
# CUB-200-2011 tree with the Reed et al. captions.
from .coco import CocoCaptions
from .cub import CubCaptions
from .filters import DataFilters, FilterReport
from .folder import FolderDataset

__all__ += ["CocoCaptions", "CubCaptions", "DataFilters", "FilterReport", "FolderDataset"]
