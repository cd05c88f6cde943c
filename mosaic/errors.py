"""Exception types raised by mosaic. Every message names the file or parameter at fault."""


class MosaicError(Exception):
    """Base class for errors that the CLI reports as one line."""


class UsageError(MosaicError, ValueError):
    """A bad parameter, flag value or input file (exit code 2)."""


class MetadataError(UsageError):
    """A metadata CSV that cannot be used."""


class ImageError(MosaicError):
    """One image that cannot be used; the pipeline skips it and records the reason."""


class BundleError(MosaicError):
    """A bundle that is missing, unfinished or of an unknown schema."""


class LockError(MosaicError):
    """Another pipeline is writing the same bundle."""
