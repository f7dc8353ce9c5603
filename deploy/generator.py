#!/usr/bin/env python3
"""Quickstart record generator: creates the Kinesis stream (if needed) and keeps putting
records into it, a few per second, with partition keys that include non-ASCII text.

Environment: KINESIS_ENDPOINT (e.g. http://emulator:4566), KCL_STREAM_NAME, KCL_REGION,
NUMBER_OF_SHARDS (default 4), RECORDS_PER_SECOND (default 5), AWS_* credentials (any values
work against the emulator).
"""

import json
import os
import sys
import time

import boto3
from botocore.exceptions import ClientError, EndpointConnectionError

stream = os.environ["KCL_STREAM_NAME"]
shards = int(os.environ.get("NUMBER_OF_SHARDS", "4"))
rate = float(os.environ.get("RECORDS_PER_SECOND", "5"))
kinesis = boto3.client(
    "kinesis",
    endpoint_url=os.environ.get("KINESIS_ENDPOINT"),
    region_name=os.environ.get("KCL_REGION", "us-east-1"),
)

for attempt in range(60):
    try:
        kinesis.create_stream(StreamName=stream, ShardCount=shards)
        print(f"generator: created stream {stream} with {shards} shards", flush=True)
        break
    except ClientError as e:
        if e.response["Error"]["Code"] == "ResourceInUseException":
            print(f"generator: stream {stream} exists", flush=True)
            break
        raise
    except EndpointConnectionError:
        time.sleep(1)
else:
    sys.exit("generator: the Kinesis endpoint never came up")
kinesis.get_waiter("stream_exists").wait(StreamName=stream)

keys = ["user-1", "user-2", "clé-ü", "日本語キー", "order-42"]
n = 0
while True:
    n += 1
    key = keys[n % len(keys)]
    data = json.dumps({"n": n, "key": key, "at": time.time()}, ensure_ascii=False)
    kinesis.put_record(StreamName=stream, PartitionKey=key, Data=data.encode())
    if n % 50 == 0:
        print(f"generator: {n} records put", flush=True)
    time.sleep(1 / rate)
