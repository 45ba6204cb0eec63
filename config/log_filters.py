"""Logging filters for config.settings.LOGGING."""

import logging


class ClientErrorsOnOneLine(logging.Filter):
    """A refused request (4xx: permission denied, a bad request, a suspicious host) is one line;
    Django attaches the exception to those records too, and its traceback says nothing the
    line does not. Server errors (5xx) keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        status = getattr(record, "status_code", None)
        if isinstance(status, int) and 400 <= status < 500:
            record.exc_info = None
            record.exc_text = None
        return True
