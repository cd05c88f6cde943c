"""mosaic: turn a large image collection into a zoomable similarity map."""

__version__ = "0.1.0"
SCHEMA_VERSION = 3
