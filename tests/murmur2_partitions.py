"""Checks that every keyed message sits on the partition Apache Kafka's Java
producer would choose for its key, computed by kafka-python's murmur2 (an
implementation that is not vitrina's):

    python3 tests/murmur2_partitions.py MESSAGES_FILE

MESSAGES_FILE holds one JSON object per line: {"topic", "partition", "key"
(hex), "partitions"}. The Java client's default partitioner puts a keyed
record on (murmur2(key) & 0x7fffffff) % partitions. Prints {"checked": n,
"topics": {topic: n}}; exits 1 naming the first message elsewhere.
"""
import json
import sys

from kafka.partitioner.default import murmur2


def main(path):
    checked, topics = 0, {}
    with open(path) as f:
        for line in f:
            m = json.loads(line)
            key = bytes.fromhex(m["key"])
            want = (murmur2(key) & 0x7FFFFFFF) % m["partitions"]
            if want != m["partition"]:
                print(
                    f"{m['topic']}: key {key!r} is on partition {m['partition']}, "
                    f"a Java producer puts it on {want}",
                    file=sys.stderr,
                )
                sys.exit(1)
            checked += 1
            topics[m["topic"]] = topics.get(m["topic"], 0) + 1
    print(json.dumps({"checked": checked, "topics": topics}))


if __name__ == "__main__":
    main(sys.argv[1])
