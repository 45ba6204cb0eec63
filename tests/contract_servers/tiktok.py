"""TikTok's Business API (v1.3): the DMP custom audience endpoints a file-based sync uses.

    POST /open_api/v1.3/dmp/custom_audience/file/upload/   multipart/form-data: advertiser_id,
         calculate_type, file_signature (MD5 hex of the file), file (.txt or .csv, one
         identifier per line)                                → data.file_path
    POST /open_api/v1.3/dmp/custom_audience/update/        JSON {advertiser_id, custom_audience_id,
         action: APPEND | REMOVE | REPLACE (default REPLACE), file_paths | custom_audience_name}
    GET  /open_api/v1.3/dmp/custom_audience/get/           advertiser_id, custom_audience_ids (a JSON
         list of 1..100 ids)                                 → data.list[].audience_details (cover_num)
    GET  /open_api/v1.3/dmp/custom_audience/list/          advertiser_id, page (from 1), page_size
         (1..100, default 10)                               → data.list[] (audience_id, name,
                                                              cover_num, is_valid, ...), data.page_info
    GET  /open_api/v1.3/advertiser/info/                   advertiser_ids (a JSON list of 1..100 ids),
         fields (a JSON list; default all)                  → data.list[] (advertiser_id, name,
                                                              status, company, currency, ...)

Everything TikTok's API logic sees is answered HTTP 200 with `{"code", "message", "request_id",
"data"}`, code 0 when it went through; an error is a non-zero code in that 200:

- `Access-Token` header missing 40104, wrong 40105; an advertiser the token may not operate 40001
  (in advertiser/info, any one of the ids it names);
- an unknown advertiser/info field, a page or page_size out of range, 40002;
- a missing or malformed field, or a file of another calculate_type than its audience, 40002;
  an unknown calculate_type 40909;
- a file whose MD5 is not its file_signature 40900; a file name not ending .txt or .csv 40908; an
  empty file 40906; a line that is no lowercase SHA-256 hex (for the *_SHA256 types) 40915;
- an unknown custom audience 40007; an unknown (or another advertiser's) file_path 40905;
- an APPEND, REMOVE or REPLACE that would leave the audience under `minimum` people (TikTok:
  1,000) fails with 40002, as TikTok documents, and changes nothing;
- the rate limit (the common token bucket) answers as TikTok does: HTTP 200 with code 40100.

`answer_codes([0, 50002, ...])` makes the next requests answer with those codes (their state is
not applied; 0 lets one through), for the error classes a test cannot provoke otherwise. Only a fault plan's injected
`429`/`500` (faults in front of the API) use HTTP statuses. `members(audience_id)` is the set of
hashes an audience holds now; `cover_num` counts those TikTok knows (`known`, default: all).
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import itertools
import json
import re
import sys

from .common import ContractServer, Request, Response, arg_parser, common_kwargs, serve_until_signalled

API = "/open_api/v1.3/dmp/custom_audience/"
UPLOAD, UPDATE, GET, LIST = API + "file/upload/", API + "update/", API + "get/", API + "list/"
ADVERTISER_INFO = "/open_api/v1.3/advertiser/info/"
ADVERTISER_FIELDS = ("advertiser_id", "name", "status", "company", "currency", "timezone", "role", "country", "create_time")
CALCULATE_TYPES = (
    "EMAIL_SHA256",
    "PHONE_SHA256",
    "IDFA_SHA256",
    "GAID_SHA256",
    "MAID_SHA256",
    "IDFA_MD5",
    "GAID_MD5",
    "MAID_MD5",
    "FIRST_SHA256",
    "FIRST_MD5",
    "MULTIPLE_TYPES",
)
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
ACTIONS = ("APPEND", "REMOVE", "REPLACE")
MINIMUM = 1000


class TikTokServer(ContractServer):
    """The Business API for one advertiser and one access token.

    `audiences`: {custom_audience_id: calculate_type} to start with (more with
    `create_audience`, which also takes the members an audience was created from).
    `keep_files=False` forgets a file once an update has applied it (long benchmark runs: a
    million rows are otherwise kept twice, as files and as members)."""

    name = "tiktok"

    def __init__(
        self,
        token: str = "test-access-token",
        advertiser_id: str = "7000000000000000001",
        *,
        audiences: dict[str, str] | None = None,
        minimum: int = MINIMUM,
        known=None,
        keep_files: bool = True,
        advertiser_name: str = "Downstream Test Advertiser",
        advertiser_status: str = "STATUS_ENABLE",
        **kwargs,
    ):
        self.token = token
        self.keep_files = keep_files
        self.advertiser_id = advertiser_id
        # the ad account as advertiser/info describes it (a test may change the name or status)
        self.advertiser_name = advertiser_name
        self.advertiser_status = advertiser_status
        self.minimum = minimum
        self.known = set(known) if known is not None else None
        self._created: dict[str, tuple[str, str, frozenset]] = {}  # id → (calculate_type, name, seed members)
        super().__init__(**kwargs)
        for audience_id, calculate_type in (audiences or {}).items():
            self.create_audience(audience_id, calculate_type)

    @property
    def api_url(self) -> str:
        """What Downstream's TikTok base URL setting should be."""
        return self.url

    def create_audience(self, audience_id: str, calculate_type: str = "EMAIL_SHA256", *, name: str = "", members=()) -> None:
        with self._lock:
            self._created[audience_id] = (calculate_type, name or f"Audience {audience_id}", frozenset(members))
            self._audiences[audience_id] = {
                "calculate_type": calculate_type,
                "name": name or f"Audience {audience_id}",
                "members": set(members),
                "history": [],
            }

    def answer_codes(self, codes) -> None:
        """The next requests (one per code) answer with these codes and apply nothing; a 0 lets
        its request through as usual."""
        with self._lock:
            self._planned_codes.extend(int(c) for c in codes)

    # -- recorded state --------------------------------------------------------------------

    def _reset_base_state(self) -> None:
        super()._reset_base_state()
        self._reset_tiktok_state()

    def _reset_tiktok_state(self) -> None:
        self._request_ids = itertools.count(1)
        self._files: dict[str, dict] = {}
        self._uploads: list[dict] = []
        self._updates: list[dict] = []
        self._refused: dict[int, int] = {}
        self._planned_codes: list[int] = []
        self._audiences: dict[str, dict] = {
            audience_id: {"calculate_type": calculate_type, "name": name, "members": set(seed), "history": []}
            for audience_id, (calculate_type, name, seed) in getattr(self, "_created", {}).items()
        }

    # -- HTTP ------------------------------------------------------------------------------

    def _answer(self, code: int = 0, message: str = "OK", data=None) -> Response:
        with self._lock:
            request_id = f"2025010100000{next(self._request_ids):08d}"
            if code:
                self._refused[code] = self._refused.get(code, 0) + 1
        return Response.json(
            200, {"code": code, "message": message, "request_id": request_id, "data": data if data is not None else {}}
        )

    def error_body(self, status: int, message: str):
        return {"code": 40100 if status == 429 else 50000, "message": message, "request_id": "", "data": {}}

    def _fault_response(self, action: str, req: Request) -> Response:
        if action == "rate_limit":  # TikTok's own rate limit is a code in a 200, with no Retry-After
            return self._answer(40100, "Too many requests. Please retry in some time.")
        return super()._fault_response(action, req)

    def handle(self, req: Request) -> Response:
        endpoints = {
            UPLOAD: ("POST", self._upload),
            UPDATE: ("POST", self._update),
            GET: ("GET", self._get),
            LIST: ("GET", self._list),
            ADVERTISER_INFO: ("GET", self._advertiser_info),
        }
        if req.path not in endpoints:
            return Response(404, b"404 page not found", content_type="text/plain")
        method, handler = endpoints[req.path]
        if req.method != method:
            return Response(405, b"405 method not allowed", content_type="text/plain")
        token = req.headers.get("Access-Token")
        if not token:
            return self._answer(40104, "Access token is null, you should set it in http header with key Access-Token.")
        if token != self.token:
            return self._answer(40105, "Access token is incorrect or has been revoked.")
        with self._lock:
            planned = self._planned_codes.pop(0) if self._planned_codes else None
        if planned:
            return self._answer(planned, f"planned answer {planned}")
        return handler(req)

    def _advertiser_problem(self, advertiser_id) -> Response | None:
        if not advertiser_id:
            return self._answer(40002, "Missing required field(s): advertiser_id.")
        if str(advertiser_id) != self.advertiser_id:
            return self._answer(40001, f"No permission to operate advertiser {advertiser_id}.")
        return None

    def _upload(self, req: Request) -> Response:
        form = _multipart(req)
        if form is None:
            return self._answer(40002, "The request must be multipart/form-data.")
        if problem := self._advertiser_problem(form["advertiser_id"][1].decode() if "advertiser_id" in form else ""):
            return problem
        missing = [name for name in ("calculate_type", "file_signature", "file") if name not in form]
        if missing:
            return self._answer(40002, f"Missing required field(s): {', '.join(missing)}.")
        calculate_type = form["calculate_type"][1].decode()
        if calculate_type not in CALCULATE_TYPES:
            return self._answer(40909, f"The calculate_type {calculate_type} is not supported.")
        file_name, content = form["file"]
        if not file_name or not file_name.endswith((".txt", ".csv")):
            return self._answer(40908, "Only .csv and .txt files are supported.")
        if hashlib.md5(content).hexdigest() != form["file_signature"][1].decode().strip().lower():
            return self._answer(40900, "The signature we calculated does not match the signature you provided for the file.")
        lines = [line.strip() for line in content.decode("utf-8", "replace").splitlines() if line.strip()]
        if not lines:
            return self._answer(40906, "The file is empty.")
        if calculate_type.endswith("_SHA256") and (
            bad := next((n for n, line in enumerate(lines, 1) if not SHA256_HEX.match(line)), None)
        ):
            return self._answer(40915, f"Line {bad} of the file is not a {calculate_type} value (64 lowercase hex digits).")
        with self._lock:
            file_path = f"dmp/{self.advertiser_id}/{hashlib.sha256(content).hexdigest()[:16]}-{len(self._files) + 1}.txt"
            self._files[file_path] = {"calculate_type": calculate_type, "lines": lines, "name": file_name}
            self._uploads.append(
                {
                    "file_path": file_path,
                    "calculate_type": calculate_type,
                    "rows": len(lines),
                    "name": file_name,
                    "request_seq": req.record["seq"],
                }
            )
        req.set_rows(len(lines))
        return self._answer(data={"file_path": file_path})

    def _update(self, req: Request) -> Response:
        try:
            body = req.json()
        except ValueError as exc:
            return self._answer(40002, f"The request body is not JSON: {exc}")
        if not isinstance(body, dict):
            return self._answer(40002, "The request body must be a JSON object.")
        if problem := self._advertiser_problem(body.get("advertiser_id")):
            return problem
        audience_id = body.get("custom_audience_id")
        if not isinstance(audience_id, (str, int)) or isinstance(audience_id, bool) or not str(audience_id).isdigit():
            return self._answer(40002, "custom_audience_id: a custom audience id (int64) is required.")
        audience_id = str(audience_id)
        action = body.get("action", "REPLACE")
        file_paths = body.get("file_paths")
        if action not in ACTIONS:
            return self._answer(40002, f"action: {action!r} is not one of {', '.join(ACTIONS)}.")
        if file_paths is None and not body.get("custom_audience_name"):
            return self._answer(40002, "Either file_paths or custom_audience_name must be passed.")
        if file_paths is not None and (
            not isinstance(file_paths, list) or not file_paths or not all(isinstance(p, str) for p in file_paths)
        ):
            return self._answer(40002, "file_paths: a non-empty list of file paths is required.")
        with self._lock:
            audience = self._audiences.get(audience_id)
            if audience is None:
                return self._answer(40007, f"The custom audience {audience_id} does not exist.")
            if body.get("custom_audience_name"):
                audience["name"] = str(body["custom_audience_name"])[:128]
            if file_paths is None:
                return self._answer()
            files = []
            for path in file_paths:
                if path not in self._files:
                    return self._answer(40905, f"The file {path} does not exist.")
                if self._files[path]["calculate_type"] != audience["calculate_type"]:
                    return self._answer(
                        40002,
                        f"The file {path} is {self._files[path]['calculate_type']}; the audience is "
                        f"{audience['calculate_type']}.",
                    )
                files.append(self._files[path])
            lines = {line for f in files for line in f["lines"]}
            members = audience["members"]
            after = members | lines if action == "APPEND" else members - lines if action == "REMOVE" else set(lines)
            if len(after) < self.minimum:
                return self._answer(
                    40002, f"The audience size will be less than {self.minimum} after the operation: {action} is not allowed."
                )
            audience["members"] = after
            if not self.keep_files:
                for path in file_paths:
                    self._files.pop(path, None)
            record = {
                "audience_id": audience_id,
                "action": action,
                "file_paths": list(file_paths),
                "rows": len(lines),
                "size_after": len(after),
                "request_seq": req.record["seq"],
            }
            audience["history"].append(record)
            self._updates.append(record)
        req.set_rows(len(lines))
        return self._answer()

    def _get(self, req: Request) -> Response:
        if problem := self._advertiser_problem(req.param("advertiser_id")):
            return problem
        try:
            ids = json.loads(req.param("custom_audience_ids") or "")
        except ValueError:
            ids = None
        if not isinstance(ids, list) or not 1 <= len(ids) <= 100:
            return self._answer(40002, "custom_audience_ids: a JSON list of 1 to 100 audience ids is required.")
        found = []
        with self._lock:
            for audience_id in map(str, ids):
                audience = self._audiences.get(audience_id)
                if audience is None:
                    return self._answer(40007, f"The custom audience {audience_id} does not exist.")
                matched = self._matched(audience)
                found.append(
                    {
                        "audience_details": {
                            "audience_id": audience_id,
                            "name": audience["name"],
                            "calculate_type": audience["calculate_type"],
                            "cover_num": matched,
                            "is_valid": matched >= self.minimum,
                            "is_creator": True,
                            "shared": False,
                            "type": "CUSTOMER_FILE",
                        },
                        "audience_history": [
                            {"action": h["action"], "msg": f"{h['rows']} rows"} for h in audience["history"][-100:]
                        ],
                    }
                )
        return self._answer(data={"list": found})

    def _list(self, req: Request) -> Response:
        if problem := self._advertiser_problem(req.param("advertiser_id")):
            return problem
        try:
            page, page_size = int(req.param("page") or 1), int(req.param("page_size") or 10)
        except ValueError:
            page = page_size = 0
        if page < 1 or not 1 <= page_size <= 100:
            return self._answer(40002, "page: a number from 1; page_size: a number from 1 to 100.")
        found = []
        with self._lock:
            audiences = sorted(self._audiences.items())
            for audience_id, audience in audiences[(page - 1) * page_size : page * page_size]:
                matched = self._matched(audience)
                found.append(
                    {
                        "audience_id": audience_id,
                        "name": audience["name"],
                        "calculate_type": audience["calculate_type"],
                        "cover_num": matched,
                        "is_valid": matched >= self.minimum,
                        "is_expired": False,
                        "is_creator": True,
                        "shared": False,
                        "audience_type": "CUSTOMER_FILE",
                    }
                )
        total = len(audiences)
        return self._answer(
            data={
                "list": found,
                "page_info": {"page": page, "page_size": page_size, "total_number": total, "total_page": -(-total // page_size)},
            }
        )

    def _advertiser_info(self, req: Request) -> Response:
        try:
            ids = json.loads(req.param("advertiser_ids") or "")
            fields = json.loads(req.param("fields")) if req.param("fields") else list(ADVERTISER_FIELDS)
        except ValueError:
            ids = fields = None
        if not isinstance(ids, list) or not 1 <= len(ids) <= 100:
            return self._answer(40002, "advertiser_ids: a JSON list of 1 to 100 advertiser ids is required.")
        unknown = [f for f in fields if f not in ADVERTISER_FIELDS] if isinstance(fields, list) else [fields]
        if unknown:
            return self._answer(
                40002, f"fields: {unknown[0]!r} is not a field of advertiser/info; use {', '.join(ADVERTISER_FIELDS)}."
            )
        for advertiser_id in ids:
            if problem := self._advertiser_problem(advertiser_id):
                return problem
        values = {
            "advertiser_id": self.advertiser_id,
            "name": self.advertiser_name,
            "status": self.advertiser_status,
            "company": f"{self.advertiser_name} Ltd",
            "currency": "USD",
            "timezone": "Etc/GMT",
            "role": "ROLE_ADVERTISER",
            "country": "US",
            "create_time": 1700000000,
        }
        return self._answer(data={"list": [{f: values[f] for f in fields} for _ in ids]})

    def _matched(self, audience: dict) -> int:
        return len(audience["members"] if self.known is None else audience["members"] & self.known)

    # -- what tests look at ----------------------------------------------------------------

    def members(self, audience_id: str) -> set[str]:
        with self._lock:
            audience = self._audiences.get(str(audience_id))
            return set(audience["members"]) if audience else set()

    def uploads(self) -> list[dict]:
        with self._lock:
            return [dict(u) for u in self._uploads]

    def updates(self, audience_id: str | None = None) -> list[dict]:
        with self._lock:
            return [dict(u) for u in self._updates if audience_id is None or u["audience_id"] == str(audience_id)]

    def refused(self) -> dict[int, int]:
        """How often each non-zero code was answered."""
        with self._lock:
            return dict(self._refused)

    def counters(self) -> dict:
        return {
            "uploads": len(self._uploads),
            "updates": len(self._updates),
            "rows_appended": sum(u["rows"] for u in self._updates if u["action"] == "APPEND"),
            "rows_removed": sum(u["rows"] for u in self._updates if u["action"] == "REMOVE"),
            "refused": {str(code): n for code, n in self._refused.items()},
        }

    def extra_state(self, req: Request) -> dict:
        state = {
            "audiences": {
                a: {"calculate_type": v["calculate_type"], "members": len(v["members"])} for a, v in self._audiences.items()
            }
        }
        if req.param("members") in ("1", "true", "yes"):
            state["members"] = {a: sorted(v["members"]) for a, v in self._audiences.items()}
        return state


def _multipart(req: Request) -> dict[str, tuple[str | None, bytes]] | None:
    """{field name: (file name or None, bytes)} of a multipart/form-data body, or None."""
    content_type = req.headers.get("Content-Type") or ""
    if not content_type.lower().startswith("multipart/form-data"):
        return None
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + req.body
    )
    if not message.is_multipart():
        return None
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[name] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


def build(argv: list[str] | None = None) -> TikTokServer:
    parser = arg_parser("TikTok Business API (DMP custom audiences) contract server (loopback).")
    parser.add_argument("--token", default="test-access-token", help="the access token (Access-Token header)")
    parser.add_argument("--advertiser-id", default="7000000000000000001")
    parser.add_argument(
        "--audience",
        action="append",
        default=[],
        metavar="ID[:TYPE]",
        help="a custom audience to serve, e.g. 1800000000000001:EMAIL_SHA256 (repeatable)",
    )
    parser.add_argument(
        "--minimum", type=int, default=MINIMUM, help=f"the smallest audience an update may leave (TikTok: {MINIMUM}); 0 for none"
    )
    parser.add_argument("--forget-applied-files", action="store_true", help="drop a file once an update applied it")
    args = parser.parse_args(argv)
    audiences = dict((spec.split(":", 1) + ["EMAIL_SHA256"])[:2] for spec in args.audience)
    return TikTokServer(
        args.token,
        args.advertiser_id,
        audiences=audiences,
        minimum=args.minimum,
        keep_files=not args.forget_applied_files,
        **common_kwargs(args),
    )


def main(argv: list[str] | None = None) -> int:
    return serve_until_signalled(build(argv))


if __name__ == "__main__":
    sys.exit(main())
