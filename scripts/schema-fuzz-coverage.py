"""Guards scripts/schema-fuzz against a run that passes without testing anything.

Usage: python3 scripts/schema-fuzz-coverage.py OPENAPI_JSON REQUESTS_HAR SCHEMA_PATH

A broken seed or a refused key would make every answer a (documented) 401/403 or 404, and the
fuzzer would report a clean run. This checks the HAR that schemathesis recorded: every operation of
the document must have been sent at least once with an answer other than 401/403, i.e. it got past
authentication. SCHEMA_PATH (the path the document itself is served at) is left out: schemathesis
does not test the operation that serves its own schema. Prints the operations that did not, and exits 1 when there are any.
"""

import json
import re
import sys
from urllib.parse import urlsplit

document = json.load(open(sys.argv[1]))
entries = json.load(open(sys.argv[2]))["log"]["entries"]
schema_path = sys.argv[3]

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
operations = {}
for path, item in document.get("paths", {}).items():
    pattern = re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$")
    for method in item:
        if method in METHODS and path != schema_path:
            operations[(method.upper(), path)] = pattern

authenticated = set()
for entry in entries:
    method = entry["request"]["method"]
    url_path = urlsplit(entry["request"]["url"]).path
    if entry["response"]["status"] in (401, 403):
        continue
    for (op_method, op_path), pattern in operations.items():
        if op_method == method and pattern.match(url_path):
            authenticated.add((op_method, op_path))

missing = sorted(set(operations) - authenticated)
for method, path in missing:
    print(f"schema-fuzz: never got past authentication: {method} {path}", file=sys.stderr)
print(
    f"schema-fuzz: {len(authenticated)}/{len(operations)} operations reached past authentication",
    file=sys.stderr,
)
sys.exit(1 if missing else 0)
