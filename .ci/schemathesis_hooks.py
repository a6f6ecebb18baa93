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
