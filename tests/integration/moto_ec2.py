"""moto's EC2 server for the tests that provision CI workers on EC2: the image id they boot and a boto3
client of the tests' own to look behind the provider. The server and its dummy AWS environment are the
``moto_url`` and ``moto_endpoint`` fixtures (``conftest.py``)."""

from __future__ import annotations

import functools
from typing import Any

import boto3

IMAGE = "ami-0123456789abcdef0"
AWS_ENV = {  # dummy credentials, as moto wants; never the instance metadata service
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}


@functools.cache
def aws(endpoint: str, region: str = "us-east-1") -> Any:
    """A boto3 EC2 client of the test's own, to look behind the provider (made once: it takes a while)."""
    return boto3.client("ec2", region_name=region, endpoint_url=endpoint)
