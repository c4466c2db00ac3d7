"""The pixel budget: how many decoded pixels one actor holds at a time.

Images are what fills an actor's memory (3 bytes a pixel as uint8 RGB, more on the way into
the model), and their sizes vary by a factor of a million within one dataset, so the work in
flight is bounded in pixels, not in images. ``WorkerConfig.pixel_budget`` (default 256 MP,
``--pixel-budget``) is split as follows:

- encode: ``prefetch_chunks + 2`` chunks can be in flight (queued by ``Prefetch``, being
  coded, being filled by the reader thread), so each chunk closes before the image that would
  take it over ``pixel_budget // (prefetch_chunks + 2)`` pixels (or at ``batch_size *
  chunk_batches`` images); an image larger than that share travels alone. In flight: at most
  the budget while images fit the share, at most ``prefetch_chunks + 2`` images otherwise
  (each within ``--max-pixels``).
- decode: a row batch's images are decoded and written in groups of at most the budget's
  pixels (the bitstream header gives each size before anything is decoded).

The codec's own working memory is bounded apart from this by its tiles (``Codec.tile``).
``pixel_chunks`` is a plain generator stage: tests call it on a list.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def chunk_pixels(pixel_budget: int, prefetch_chunks: int) -> int:
    """The pixels one encode chunk may hold: the budget over the chunks in flight (those
    queued, the one being coded and the one being filled)."""
    return max(1, pixel_budget // (prefetch_chunks + 2))


def pixel_chunks(
    items: Iterable[T], pixels: Callable[[T], int], max_items: int, max_pixels: int
) -> Iterator[list[T]]:
    """``items`` in order, in lists of at most ``max_items`` items and ``max_pixels`` pixels
    (``pixels(item)`` each; 0 for an item without an image). A list closes before the item
    that would take it over ``max_pixels``; an item over it alone is a list of its own."""
    chunk: list[T] = []
    total = 0
    for item in items:
        n = pixels(item)
        if chunk and (total + n > max_pixels or len(chunk) >= max_items):
            yield chunk
            chunk, total = [], 0
        chunk.append(item)
        total += n
    if chunk:
        yield chunk
