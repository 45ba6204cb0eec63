"""Where file destinations may write: inside settings.EXPORT_ROOT, never under a served folder.

A destination's `directory` is a folder inside the export root (relative, or absolute but
inside it; the default is the destination's key). Paths are resolved (`..` and symlinks
followed) before they are judged, when a destination is saved and again before every write,
so a link made later does not lead out either.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.conf import settings


class OutsideExportRoot(ValueError):
    """A path a file destination must not write to; the message says why and what to give."""


def export_root() -> Path:
    return Path(settings.EXPORT_ROOT).expanduser().resolve()


def served_folders() -> list[Path]:
    """Folders the web server hands out files from."""
    folders = [settings.STATIC_ROOT, getattr(settings, "MEDIA_ROOT", "")]
    for entry in settings.STATICFILES_DIRS:
        folders.append(entry[1] if isinstance(entry, (list, tuple)) else entry)
    return [Path(folder).resolve() for folder in folders if folder]


def confined(path: Path) -> Path:
    """`path`, resolved, when it lies inside the export root and holds no served folder;
    else OutsideExportRoot."""
    root = export_root()
    resolved = Path(os.path.realpath(path))
    if not resolved.is_relative_to(root):
        raise OutsideExportRoot(
            f"{str(path)!r} leads to {resolved}, outside the export root {root} (EXPORT_ROOT): give a folder "
            "inside it, such as 'partner-x'; absolute paths, '..' and links that lead out of it are refused"
        )
    for served in served_folders():
        if resolved.is_relative_to(served) or served.is_relative_to(resolved):
            raise OutsideExportRoot(
                f"{str(path)!r} leads to {resolved}, which is or holds {served}, a folder served by the web server: "
                "exports never go there; give another folder inside the export root"
            )
    return resolved


def export_folder(directory, *, key: str) -> Path:
    """The folder a file destination writes into: `directory` inside the export root (the
    destination's key when none is given), resolved and checked."""
    if directory in (None, ""):
        directory = key
    if not isinstance(directory, str):
        raise OutsideExportRoot("must be a folder name inside the export root, such as 'partner-x'")
    if "\x00" in directory:
        raise OutsideExportRoot("must not hold a NUL character")
    given = Path(directory)
    return confined(given if given.is_absolute() else export_root() / given)
