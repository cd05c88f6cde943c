"""mosaic: turn a large image collection into a zoomable similarity map."""

__version__ = "0.1.0"
SCHEMA_VERSION = 5
# Older schemas this version still reads (3: one layout, read as the similarity layout;
# 4: the cell size also in cells and every layout's grid, copies the model ignores).
READABLE_SCHEMAS = (3, 4, 5)
