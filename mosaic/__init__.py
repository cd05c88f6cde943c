"""mosaic: turn a large image collection into a zoomable similarity map."""

__version__ = "0.1.0"
SCHEMA_VERSION = 4
# Older schemas this version still reads (3: one layout, read as the similarity layout).
READABLE_SCHEMAS = (3, 4)
