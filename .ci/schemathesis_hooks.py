"""Schemathesis hooks for oncely's CI run.

Idempotency keys are meant to be unique per request, as a client makes them (a UUID);
generated values repeat ("0", "a"), which would turn valid requests into key reuses
(422, as the Idempotency-Key draft asks). Right before each call, a generated key that is
valid gets a unique suffix; an invalid one (empty, a space, too long) is left as it was,
so negative cases still reach the server as generated.
"""
import re
import uuid

import schemathesis

VALID_KEY = re.compile(r"^[!-~]{1,200}$")


@schemathesis.hook
def before_call(context, case, **kwargs):
    headers = case.headers
    if not headers:
        return
    key = headers.get("Idempotency-Key")
    if isinstance(key, str) and VALID_KEY.match(key):
        headers["Idempotency-Key"] = f"{key}-{uuid.uuid4().hex}"


# An upload's checksum and content must agree, which no schema can say: a body that the
# schema allows gets content that decodes, its real SHA-256, and names the server takes,
# so it is accepted as the schema promises. A body the schema refuses is left as generated.
import base64
import hashlib

UPLOAD_FIELDS = {"bucket", "objectKey", "contentType", "contentBase64", "sha256"}
SCHEMA_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
SCHEMA_MEDIA = re.compile(r"^[!-~]+/[!-~]+$")
SCHEMA_SHA = re.compile(r"^[0-9a-f]{64}$")


def _schema_valid_upload(body):
    return (
        isinstance(body, dict)
        and set(body) == UPLOAD_FIELDS
        and all(isinstance(body[f], str) for f in UPLOAD_FIELDS)
        and SCHEMA_BUCKET.match(body["bucket"])
        and SCHEMA_MEDIA.match(body["contentType"]) and len(body["contentType"]) <= 255
        and 1 <= len(body["objectKey"]) <= 1024
        and SCHEMA_SHA.match(body["sha256"])
    )


def _fix_upload(body):
    content = body["contentBase64"].encode("utf-8", "surrogatepass")[:4096]
    body["contentBase64"] = base64.b64encode(content).decode()
    body["sha256"] = hashlib.sha256(content).hexdigest()
    if ".." in body["bucket"]:
        body["bucket"] = "oncely-fuzz"
    parts = body["objectKey"].split("/")
    control = any(ord(c) < 32 or 127 <= ord(c) <= 159 for c in body["objectKey"])
    too_long = len(body["objectKey"].encode("utf-8", "surrogatepass")) > 1024
    if any(p in ("", ".", "..") for p in parts) or control or too_long:
        body["objectKey"] = "fuzz/object"
    kind, _, sub = body["contentType"].partition("/")
    if not kind or not sub or "/" in sub:
        body["contentType"] = "application/octet-stream"


@schemathesis.hook("before_call")
def fix_uploads(context, case, **kwargs):
    if getattr(case.operation, "path", "") == "/v1/uploads" and _schema_valid_upload(case.body):
        _fix_upload(case.body)
