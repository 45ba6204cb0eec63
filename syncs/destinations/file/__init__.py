"""File export: its spec and its transport (CSV or JSONL per audience under the export root)."""

from ...exports import OutsideExportRoot, export_folder
from ..spec import DestinationSpec, Setting
from .transport import MAX_BATCH, Transport


def directory_problems(options: dict, key: str) -> list[str]:
    try:
        export_folder(options.get("directory"), key=key)
    except OutsideExportRoot as exc:
        return [f"directory: {exc}"]
    return []


SPEC = DestinationSpec(
    kind="file",
    label="File export",
    transport=Transport,
    settings=(
        Setting("directory", "directory", help="A folder inside the export root; default: the destination's key."),
        Setting("format", "format", type="choice", choices=("csv", "jsonl"), default="csv"),
    ),
    max_batch=MAX_BATCH,
    check=directory_problems,
)

__all__ = ["SPEC", "Transport"]
