"""Image files a job is pointed at: which suffixes count as images, and finding them.

Two walks, on purpose: ``find_images`` (``oscar eval``) takes a directory's own images and
reports each missing input as a line while the others go on; ``image_files`` (model
fitting) takes every image under a tree and raises when anything is missing.
"""

from __future__ import annotations

from pathlib import Path

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm"})


def image_files(paths: list[str], limit: int | None = None) -> list[Path]:
    """Image files given directly or under the given directories (recursive, sorted), the
    first ``limit``. FileNotFoundError for a path that is neither; ValueError for none."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such image file or directory")
    if not files:
        raise ValueError(f"no images in {paths}")
    return files[:limit] if limit else files


def find_images(inputs: list[str], limit: int | None = None) -> tuple[list[Path], list[str]]:
    """Files (as given) and directories (their images, sorted, not recursive) -> paths, errors."""
    paths, errors = [], []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                errors.append(f"{item}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            paths.extend(found)
        elif p.is_file():
            paths.append(p)
        else:
            errors.append(f"{item}: no such file or directory")
    return (paths[:limit] if limit else paths), errors
