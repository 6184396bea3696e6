"""schemathesis hooks for Prism (tests/api-fuzz/run.sh)."""

import json

import schemathesis


@schemathesis.serializer("application/x-ndjson")
def ndjson(ctx, value):
    """The bulk route's body: a generated string goes as it is (lone surrogates included, so
    the server also sees invalid UTF-8); anything else goes as one JSON value per line."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, list):
        return "\n".join(json.dumps(item) for item in value).encode("utf-8", "surrogatepass")
    return json.dumps(value).encode("utf-8", "surrogatepass")
