#!/usr/bin/env python3
"""A stand-in for the regional data mart's upload service, for tests.

Speaks the service's two calls (the OpenAPI description in PyPI's
`uploader-client`, `uploader_client/contrib/rdm/interfaces/rdm.json`):

  POST /{version}/datamarts/{datamart}/tables/{table}/{upload|delete}  text/csv -> "request id"
  GET  /{version}/requests/{id}/status -> {"code": n, "description": "..."}

Requests are processed one at a time in arrival order, each after
--processing-ms, passing through codes 0 (buffered), 1 (waiting for a
delta to open) and 2 (processing) to 3 (processed) or 7 (format-logical
control errors). A file passes the control when its header names the
table's columns in order (--tables, a JSON file: table -> {"columns": [...],
"required": [...], "primary_key": [...]}), every row has every column,
required values are present and datetimes read YYYY-MM-DD hh:mm:ss.
Uploads upsert by primary key, deletes delete by it.

Faults: --fail-first N answers the first N POSTs with 500; a row holding
--reject-marker fails the control. GET /_mock/state (not part of the
service) returns the tables and counters as JSON; GET
/_mock/latency?since=&until= (Unix seconds) the journal commit -> accepted
figures of rows committed in that window.

Standard library only.
"""

import argparse
import csv
import hashlib
import io
import json
import queue
import re
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

DATETIME = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
UPLOAD = re.compile(r"^/([^/]+)/datamarts/([^/]+)/tables/([^/]+)/(upload|delete)$")
STATUS = re.compile(r"^/([^/]+)/requests/([^/]+)/status$")


class Service:
    def __init__(self, args):
        self.args = args
        with open(args.tables) as f:
            self.spec = json.load(f)
        self.lock = threading.Lock()
        self.tables = {t: {} for t in self.spec}
        self.requests = {}
        self.posts = 0
        self.bodies = {}
        self.duplicate_posts = 0
        self.deletes_of_missing = 0
        self.rejected = 0
        # (create_datetime as written, accepted at: Unix seconds) per accepted row.
        self.accepted = []
        self.work = queue.Queue()
        threading.Thread(target=self.worker, daemon=True).start()

    def check(self, table, body):
        """The rows of a file, or the control's errors."""
        spec = self.spec.get(table)
        if spec is None:
            return None, [f"unknown table {table}"]
        rows = list(csv.reader(io.StringIO(body), delimiter=";", quotechar='"'))
        if not rows:
            return None, ["empty file"]
        header, data = rows[0], rows[1:]
        errors = []
        if header != spec["columns"]:
            errors.append(f"header {header} is not {spec['columns']}")
            return None, errors
        out = []
        for n, r in enumerate(data, start=2):
            if len(r) != len(header):
                errors.append(f"line {n}: {len(r)} values for {len(header)} columns")
                continue
            row = dict(zip(header, r))
            for c in spec["required"]:
                if row[c] == "":
                    errors.append(f"line {n}: {c} is required")
            for c, v in row.items():
                if c.endswith("_datetime") and v and not DATETIME.match(v):
                    errors.append(f"line {n}: {c} {v!r} is not YYYY-MM-DD hh:mm:ss")
            if self.args.reject_marker and any(self.args.reject_marker in v for v in r):
                errors.append(f"line {n}: value rejected by the control")
            out.append(row)
        return out, errors

    def worker(self):
        while True:
            rid = self.work.get()
            req = self.requests[rid]
            time.sleep(max(0.0, req["at"] + self.args.processing_ms / 1000 - time.time()))
            rows, errors = self.check(req["table"], req["body"])
            with self.lock:
                if errors:
                    req["code"] = 7
                    req["description"] = "Ошибки ФЛК: " + "; ".join(errors[:5])
                    self.rejected += 1
                else:
                    pk = self.spec[req["table"]]["primary_key"]
                    held = self.tables[req["table"]]
                    now = time.time()
                    for row in rows:
                        if req["operation"] == "upload":
                            self.accepted.append((row.get("create_datetime", ""), now))
                        key = "|".join(row[c] for c in pk)
                        if req["operation"] == "upload":
                            held[key] = row
                        elif held.pop(key, None) is None:
                            self.deletes_of_missing += 1
                    req["code"] = 3
                    req["description"] = "успешно обработан"

    def post(self, table, operation, body):
        with self.lock:
            self.posts += 1
            if self.posts <= self.args.fail_first:
                return None
            digest = hashlib.sha256(body.encode()).hexdigest()
            if digest in self.bodies:
                self.duplicate_posts += 1
            self.bodies[digest] = self.bodies.get(digest, 0) + 1
            rid = str(uuid.uuid4())
            self.requests[rid] = {
                "table": table, "operation": operation, "body": body,
                "at": time.time(), "code": -1, "description": "загрузка данных в буфер",
            }
        self.work.put(rid)
        return rid

    def status(self, rid):
        with self.lock:
            req = self.requests.get(rid)
            if req is None:
                return {"code": 5, "description": "идентификатор запроса не найден"}
            if req["code"] in (3, 7):
                return {"code": req["code"], "description": req["description"]}
            share = (time.time() - req["at"]) / max(self.args.processing_ms / 1000, 1e-3)
            code = 0 if share < 1 / 3 else 1 if share < 2 / 3 else 2
            return {"code": code, "description": ["запрос буферизирован", "ожидает открытия дельты", "в обработке"][code]}

    def latency(self, utc_offset_minutes, since, until):
        """Journal commit -> accepted over rows committed in [since, until]
        (Unix seconds): count, p50, p99, max. create_datetime has whole
        seconds: each figure is within a second."""
        import datetime
        tz = datetime.timezone(datetime.timedelta(minutes=utc_offset_minutes))
        lags = []
        with self.lock:
            rows = list(self.accepted)
        for created, at in rows:
            try:
                t = datetime.datetime.strptime(created, "%Y-%m-%d %H:%M:%S").replace(tzinfo=tz).timestamp()
            except ValueError:
                continue
            if since <= t <= until:
                lags.append(at - t)
        lags.sort()
        pick = lambda q: lags[min(len(lags) - 1, int(q * len(lags)))] if lags else None
        return {"rows": len(lags), "p50_s": pick(0.5), "p99_s": pick(0.99), "max_s": lags[-1] if lags else None}

    def state(self):
        with self.lock:
            return {
                "tables": self.tables, "posts": self.posts,
                "duplicate_posts": self.duplicate_posts,
                "deletes_of_missing": self.deletes_of_missing,
                "rejected": self.rejected,
                "pending": sum(1 for r in self.requests.values() if r["code"] not in (3, 7)),
            }


def handler(service, token):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def reply(self, code, value, content_type="application/json"):
            body = json.dumps(value, ensure_ascii=False).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def authorized(self):
            if token and self.headers.get("Authorization") != f"Bearer {token}":
                self.reply(401, {"error": "bad token"})
                return False
            return True

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8")
            m = UPLOAD.match(self.path)
            if not m:
                return self.reply(404, {"error": "no such path"})
            if not self.authorized():
                return
            if not (self.headers.get("Content-Type") or "").startswith("text/csv"):
                return self.reply(400, {"error": "text/csv expected"})
            rid = service.post(m.group(3), m.group(4), body)
            if rid is None:
                return self.reply(500, {"error": "injected failure"})
            self.reply(200, rid)

        def do_GET(self):
            if self.path == "/_mock/state":
                return self.reply(200, service.state())
            if self.path.startswith("/_mock/latency"):
                from urllib.parse import parse_qs, urlparse
                q = {k: float(v[0]) for k, v in parse_qs(urlparse(self.path).query).items()}
                return self.reply(200, service.latency(
                    int(q.get("utc_offset_minutes", 180)), q.get("since", 0), q.get("until", 1e12)))
            m = STATUS.match(self.path)
            if not m:
                return self.reply(404, {"error": "no such path"})
            if not self.authorized():
                return
            self.reply(200, service.status(m.group(2)))

        def log_message(self, fmt, *args):
            sys.stdout.write("%s %s\n" % (self.log_date_time_string(), fmt % args))
            sys.stdout.flush()

    return Handler


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--tables", required=True)
    p.add_argument("--token", default="")
    p.add_argument("--processing-ms", type=int, default=500)
    p.add_argument("--fail-first", type=int, default=0)
    p.add_argument("--reject-marker", default="")
    args = p.parse_args()
    service = Service(args)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), handler(service, args.token))
    print(f"rdm mock listening on 127.0.0.1:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
