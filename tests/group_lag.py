"""Reads a consumer group's committed offsets and the log's end offsets
with confluent-kafka (librdkafka's Python client, not vitrina's code path),
as kafka-consumer-groups.sh or Burrow would:

    python3 tests/group_lag.py BROKERS GROUP TOPIC...

Prints {"topic[partition]": {"committed": n, "end": n, "lag": n}} for every
partition of the topics; a partition without a committed offset has
"committed": null and its lag counts from the start of the log.
"""
import json
import sys

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient


def main(brokers, group, topics):
    admin = AdminClient({"bootstrap.servers": brokers})
    reader = Consumer({"bootstrap.servers": brokers, "group.id": group + ".lag-reader"})
    parts = []
    for t in topics:
        md = admin.list_topics(t, timeout=10).topics[t]
        parts += [TopicPartition(t, p) for p in sorted(md.partitions)]
    asked = ConsumerGroupTopicPartitions(group, parts)
    committed = admin.list_consumer_group_offsets([asked])[group].result()
    got = {(tp.topic, tp.partition): tp.offset for tp in committed.topic_partitions}
    out = {}
    for tp in parts:
        low, end = reader.get_watermark_offsets(tp, timeout=10, cached=False)
        c = got.get((tp.topic, tp.partition), -1001)
        c = None if c is None or c < 0 else c
        out[f"{tp.topic}[{tp.partition}]"] = {
            "committed": c,
            "end": end,
            "lag": end - (c if c is not None else low),
        }
    reader.close()
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
