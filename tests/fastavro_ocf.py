"""Reads the ProStore feed's upload messages with fastavro's Object
Container File reader (an Avro implementation that is not vitrina's).

    python3 tests/fastavro_ocf.py DIR

DIR/<delta>/<table>/<offset>.avro holds the value of each upload message a
committed delta names. Checks ProStore's layout: a flat record (no record,
enum, array or map types; unions only with null), `sys_op` the last field
with 0 or 1, and a key at most once per table in a delta. Prints one JSON
object per record: {"delta", "table", "sys_op", "row"}; timestamps and
times as microseconds, dates as ISO days. Exits 1 naming the first file
that breaks a rule.
"""
import datetime
import json
import pathlib
import sys

from fastavro import reader

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def flat(field):
    t = field["type"]
    if isinstance(t, list):
        other = [x for x in t if x != "null"]
        return len(t) == 2 and "null" in t and len(other) == 1 and flat({"type": other[0]})
    if isinstance(t, dict):
        return t.get("type") in ("int", "long") and t.get("logicalType") in (
            "date", "time-micros", "timestamp-micros")
    return t in ("null", "boolean", "int", "long", "float", "double", "string", "bytes")


def plain(v):
    if isinstance(v, datetime.datetime):
        return (v - EPOCH) // datetime.timedelta(microseconds=1)
    if isinstance(v, datetime.date):
        return v.isoformat()
    if isinstance(v, datetime.time):
        return ((v.hour * 60 + v.minute) * 60 + v.second) * 1_000_000 + v.microsecond
    return v


def main():
    root = pathlib.Path(sys.argv[1])
    for delta in sorted(root.iterdir(), key=lambda p: int(p.name)):
        for table in sorted(p for p in delta.iterdir() if p.is_dir()):
            seen = set()
            for f in sorted(table.glob("*.avro"), key=lambda p: int(p.stem)):
                with open(f, "rb") as fh:
                    r = reader(fh)
                    schema = r.writer_schema
                    fields = schema["fields"]
                    bad = [x["name"] for x in fields if not flat(x)]
                    if bad or fields[-1]["name"] != "sys_op" or fields[-1]["type"] != "int":
                        sys.exit(f"{f}: not ProStore's layout (not flat: {bad}; last: {fields[-1]})")
                    for rec in r:
                        if rec["sys_op"] not in (0, 1):
                            sys.exit(f"{f}: sys_op {rec['sys_op']}")
                        if rec["key"] in seen:
                            sys.exit(f"{f}: key {rec['key']} twice in delta {delta.name}")
                        seen.add(rec["key"])
                        row = {k: plain(v) for k, v in rec.items() if k != "sys_op"}
                        print(json.dumps({"delta": int(delta.name), "table": table.name,
                                          "sys_op": rec["sys_op"], "row": row},
                                         ensure_ascii=False))


if __name__ == "__main__":
    main()
