"""Exceptions shared by the codec modules."""


class BitstreamError(ValueError):
    """A bitstream is malformed, truncated, corrupted or was written by another model.

    The message always names the reason (e.g. ``"bad magic b'PK'"``); callers never see a
    traceback from deeper layers for a bad file.
    """
