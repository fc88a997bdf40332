"""The one error type raised for a dataset tree that does not have the expected layout.

Unreadable image files raise `anomclip_hf.io.image_io.ImageReadError` instead; both subclass ValueError,
so callers can catch either one or both.
"""


class DatasetLayoutError(ValueError):
    """A dataset folder is missing, empty, or its files do not pair up (image without mask, ...)."""
