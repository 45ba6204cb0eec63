import csv
import io
import os
import re
import time
from datetime import UTC, datetime

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from audiences import messages as wire
from audiences.ingest import ingest_messages, source_create
from audiences.models import Source

CHUNK = 1000
NUMBER = re.compile(r"-?(0|[1-9]\d{0,17})(\.\d+)?")
ID_COLUMNS = ("userId", "user_id", "customer_id", "id")
EVENT_COLUMNS = ("event", "name")
MESSAGE_ID_COLUMNS = ("messageId", "message_id")


def csv_row_to_message(row: dict) -> dict:
    """One CSV row → a spec message. Columns `properties.x` / `traits.x` go where they say;
    other columns are properties of a track, traits of an identify."""
    message: dict = {}
    properties: dict = {}
    traits: dict = {}
    for column, raw in row.items():
        if column is None or raw is None or raw == "":
            continue
        if column in ID_COLUMNS:
            message["userId"] = raw
        elif column in EVENT_COLUMNS:
            message["event"] = raw
        elif column in MESSAGE_ID_COLUMNS:
            message["messageId"] = raw
        elif column == "type":
            message["type"] = raw
        elif column == "timestamp":
            message["timestamp"] = datetime.fromtimestamp(int(raw), tz=UTC).isoformat() if raw.isdigit() else raw
        elif column.startswith("properties."):
            properties[column[len("properties.") :]] = _scalar(raw)
        elif column.startswith("traits."):
            traits[column[len("traits.") :]] = _scalar(raw)
        else:
            (traits if row.get("type") == "identify" or not _has_event(row) else properties)[column] = _scalar(raw)
    message.setdefault("type", "track" if "event" in message else "identify")
    if properties:
        message["properties"] = properties
    if traits:
        message["traits"] = traits
    return message


def _has_event(row):
    return any(row.get(c) for c in EVENT_COLUMNS)


def _scalar(text: str):
    if NUMBER.fullmatch(text):
        return float(text) if "." in text else int(text)
    if text in ("true", "false"):
        return text == "true"
    return text


class Progress:
    def __init__(self, stream, total_bytes: int):
        self.stream = stream
        self.total = max(total_bytes, 1)
        self.started = time.monotonic()
        self.last = 0.0

    def show(self, *, lines, imported, duplicates, bad, position, final=False):
        now = time.monotonic()
        if not final and now - self.last < 1.0:
            return
        self.last = now
        rate = lines / max(now - self.started, 1e-6)
        self.stream.write(
            f"{100 * position / self.total:5.1f}%  {lines:,} lines  {imported:,} imported  "
            f"{duplicates:,} already there  {bad:,} bad  {rate:,.0f} lines/s\n"
        )
        self.stream.flush()


class Command(BaseCommand):
    help = (
        "Import people and events from a JSONL file (one Segment-spec message per line) or a CSV "
        "file (a header with userId and event or traits columns). Bad lines are reported by "
        "number and skipped; the exit status is 1 when any line was bad."
    )

    def add_arguments(self, parser):
        parser.add_argument("file")
        parser.add_argument("--format", choices=("jsonl", "csv"), help="Default: from the file extension.")
        parser.add_argument("--source", default="import", help="Source to record the events under (default: import).")

    def handle(self, *args, file, format, source, **options):
        if not os.path.isfile(file):
            raise CommandError(f"{file}: no such file")
        file_format = format or ("csv" if file.lower().endswith(".csv") else "jsonl")
        source_obj = Source.objects.filter(name=source).first() or source_create(name=source)[0]
        progress = Progress(self.stderr, os.path.getsize(file))
        counts = {"lines": 0, "imported": 0, "duplicates": 0, "bad": 0}
        pending: list[wire.Message] = []

        def flush():
            if pending:
                result = ingest_messages(source=source_obj, messages=pending)
                counts["imported"] += result.accepted
                counts["duplicates"] += result.duplicates
                pending.clear()

        with open(file, "rb") as handle:
            for number, raw in self._messages(handle, file_format):
                counts["lines"] += 1
                problem = None
                if isinstance(raw, Exception):
                    problem = str(raw)
                else:
                    message, problems = wire.parse_segment_message(raw, number, now=timezone.now())
                    if problems:
                        problem = "; ".join(f"{p.field}: {p.message}" if p.field else p.message for p in problems)
                    else:
                        pending.append(message)
                if problem:
                    counts["bad"] += 1
                    self.stderr.write(f"line {number}: {problem}")
                if len(pending) >= CHUNK:
                    flush()
                progress.show(position=handle.tell(), **counts)
            flush()
            progress.show(position=handle.tell(), final=True, **counts)

        self.stdout.write(
            f"{counts['imported']:,} imported, {counts['duplicates']:,} already there, "
            f"{counts['bad']:,} bad line(s) of {counts['lines']:,}"
        )
        if counts["bad"]:
            raise CommandError(f"{counts['bad']:,} bad line(s); fix them and import the file again", returncode=1)

    def _messages(self, handle, file_format):
        """(line number, message dict or the exception that made the line unreadable)."""
        if file_format == "csv":
            text = io.TextIOWrapper(handle, encoding="utf-8", errors="replace", newline="")
            try:
                yield from self._csv_rows(csv.DictReader(text))
            finally:
                text.detach()  # leave the byte stream open: progress reads its position
            return
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                yield number, wire.decode_json_body(line, max_bytes=settings.INGEST_MAX_MESSAGE_BYTES)
            except wire.Rejected as exc:
                yield number, ValueError(exc.problems[0].message)

    def _csv_rows(self, reader):
        if not reader.fieldnames or not any(c in reader.fieldnames for c in ID_COLUMNS):
            raise CommandError(f"the CSV header needs a customer id column: one of {', '.join(ID_COLUMNS)}")
        for row in reader:
            if None in row:
                yield reader.line_num, ValueError("more fields than the header has columns")
            elif any("\ufffd" in (value or "") for value in row.values()):
                yield reader.line_num, ValueError("not UTF-8")
            else:
                yield reader.line_num, csv_row_to_message(row)
