"""Decodes vitrina's messages with fastavro, an Avro implementation that is
not vitrina's, using only the schema files in avro/.

    python3 tests/fastavro_decode.py AVRO_DIR MESSAGES_FILE

MESSAGES_FILE holds one JSON object per line: {"topic": ..., "value": hex}.
Every message must carry the single-object marker and a fingerprint of one
of the schemas (computed by fastavro from the Parsing Canonical Form), and
its body must decode with that schema. Prints {"decoded": {topic: n},
"fingerprints": {file: hex}} as JSON; exits 1 naming the first message that
fails.
"""
import io
import json
import pathlib
import sys

from fastavro import parse_schema, schemaless_reader
from fastavro.schema import fingerprint, to_parsing_canonical_form


def main():
    avro_dir, messages = pathlib.Path(sys.argv[1]), sys.argv[2]
    by_fp, fps = {}, {}
    for f in sorted(avro_dir.glob("*.avsc")):
        raw = json.loads(f.read_text())
        fp = fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO")
        fps[f.name] = fp
        by_fp[bytes.fromhex(fp)] = (f.name, parse_schema(raw))
    decoded = {}
    with open(messages) as lines:
        for n, line in enumerate(lines):
            m = json.loads(line)
            value = bytes.fromhex(m["value"])
            where = f"message {n} on {m['topic']}"
            restricted = m["topic"].endswith(".medical_detail.v1")
            if restricted and not value:
                # A tombstone: the key's detail is erased.
                decoded[m["topic"]] = decoded.get(m["topic"], 0) + 1
                continue
            if value[:2] != b"\xc3\x01":
                fail(f"{where}: no single-object marker C3 01")
            known = by_fp.get(value[2:10])
            if known is None:
                fail(f"{where}: unknown fingerprint {value[2:10].hex()}")
            name, schema = known
            body = io.BytesIO(value[10:])
            record = schemaless_reader(body, schema, None)
            if body.tell() != len(value) - 10:
                fail(f"{where}: {len(value) - 10 - body.tell()} bytes left after the {name} record")
            entity = m["topic"].split(".")[-2]
            if restricted != (name == "medical_detail.avsc"):
                fail(f"{where}: decoded with {name}")
            if name not in ("watermark.avsc", "medical_detail.avsc") and record.get("entity") != entity:
                fail(f"{where}: decoded with {name}, entity {record.get('entity')!r}")
            decoded[m["topic"]] = decoded.get(m["topic"], 0) + 1
    print(json.dumps({"decoded": decoded, "fingerprints": fps}))


def fail(why):
    print(why, file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
    main()
