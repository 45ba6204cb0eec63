"""Files for platforms that take manual uploads: CSV or JSONL per audience.

Changes are appended to a daily delta file; `write_snapshot` writes every current member.
Files land in `settings.directory`, a folder inside the export root (EXPORT_ROOT, default
var/exports/; the folder defaults to the destination's key), checked again before each write.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from django.utils import timezone

from ...exports import OutsideExportRoot, confined, export_folder
from ...http import TransportError
from ..base import OutRow, SendResult, iso

COLUMNS = ["action", "identifier", "changed_at"]
MAX_BATCH = 5000


class Transport:
    max_batch = MAX_BATCH
    max_in_flight = 1  # one writer per file

    def __init__(self, destination):
        options = destination.settings or {}
        self.format = options.get("format", "csv")
        if self.format not in ("csv", "jsonl"):
            raise TransportError(f"file format {self.format!r} is not csv or jsonl", permanent=True)
        try:
            self.directory = export_folder(options.get("directory"), key=destination.key)
        except OutsideExportRoot as exc:
            raise TransportError(f"directory: {exc}", permanent=True)

    def _path(self, sync, kind: str) -> Path:
        stamp = timezone.now().strftime("%Y%m%d" if kind == "delta" else "%Y%m%d-%H%M%S")
        try:
            # before and after creating it: a link put in the way meanwhile leads nowhere else
            folder = confined(self.directory / sync.audience.key)
            folder.mkdir(parents=True, exist_ok=True)
            path = confined(folder) / f"{sync.key}-{kind}-{stamp}.{self.format}"
            if path.is_symlink():
                raise OutsideExportRoot(f"{path} is a link; exports are written to files, never through links")
        except OutsideExportRoot as exc:
            raise TransportError(f"directory: {exc}", permanent=True)
        return path

    def _text(self, records: list[dict], field_names: list[str], *, header: bool) -> str:
        buffer = io.StringIO()
        if self.format == "csv":
            writer = csv.DictWriter(buffer, fieldnames=COLUMNS + field_names, extrasaction="ignore")
            if header:
                writer.writeheader()
            writer.writerows(records)
        else:
            buffer.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        return buffer.getvalue()

    def _write(self, path: Path, records: list[dict], field_names: list[str]) -> None:
        text = self._text(records, field_names, header=not path.exists())
        try:
            # O_NOFOLLOW: a link swapped in after the check above is refused, not followed
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
            with open(fd, "a", encoding="utf-8", newline="") as handle:
                handle.write(text)
        except OSError as exc:
            raise TransportError(f"cannot write {path}: {exc.strerror}")

    @staticmethod
    def _records(rows: list[OutRow]) -> list[dict]:
        return [{"action": r.action, "identifier": r.identifier, "changed_at": iso(r.changed_at), **r.fields} for r in rows]

    def send(self, rows: list[OutRow], *, batch_id: str, sync, timeout: float | None = None) -> SendResult:
        self._write(self._path(sync, "delta"), self._records(rows), list(sync.fields))
        return SendResult(accepted=[r.delivery_id for r in rows], status=None)

    def render(self, rows: list[OutRow], *, sync) -> dict:
        """What `send` would append to the day's file, without writing it (the editor's preview)."""
        return {
            "method": "append",
            "url": str(self.directory / sync.audience.key / f"{sync.key}-delta-<date>.{self.format}"),
            "headers": {},
            "body": self._text(self._records(rows), list(sync.fields), header=True),
        }

    def check(self) -> str:
        """The export folder exists (or can be made) under the export root and takes a file."""
        try:
            folder = confined(self.directory)
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / ".downstream-check"
            probe.write_text("ok", encoding="utf-8")
            probe.unlink()
        except (OutsideExportRoot, OSError) as exc:
            raise TransportError(f"cannot write in {self.directory}: {getattr(exc, 'strerror', None) or exc}", permanent=True)
        return f"Files can be written in {self.directory}."

    def write_snapshot(self, sync, rows: list[OutRow]) -> Path:
        path = self._path(sync, "snapshot")
        records = [{"action": "member", "identifier": r.identifier, "changed_at": iso(r.changed_at), **r.fields} for r in rows]
        self._write(path, records, list(sync.fields))
        return path
