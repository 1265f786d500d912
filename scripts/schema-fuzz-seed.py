"""Seeds the default workspace of a fresh `pushpool up` for scripts/schema-fuzz.

Usage: python3 scripts/schema-fuzz-seed.py BASE_URL OWNER_KEY HOME OUT_ENV_FILE

Creates, through the public API only, one object of every kind a path parameter can name, so the
fuzzer's requests reach real objects instead of stopping at 404: a `process` pool with a queue, a
deployment and finished runs (their job writes its run token to <HOME>-run-tokens/<run id>, outside
the data directory its sandbox keeps it from, so the fuzzer can also act as a job), a run scheduled for tomorrow (to cancel), a user and member, a
service account, API keys and a custom role. Destructive operations (DELETE, rotate, role and
member changes) get their own "doomed" objects so that deleting them does not starve the other
operations. Writes `NAME=value` lines (ids and names only) to OUT_ENV_FILE for
scripts/schema-fuzz.toml. Standard library only; talks to BASE_URL (loopback) without a proxy.
"""

import json
import os
import re
import shlex
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone

BASE, KEY, HOME, OUT = sys.argv[1:5]
WS = f"{BASE}/api/workspaces/default"
# Never through a proxy: the server is on loopback.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def call(method, url, body=None, expect=(200, 201, 204)):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {KEY}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with OPENER.open(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    if status not in expect:
        sys.exit(f"schema-fuzz seed: {method} {url} answered {status}: {raw[:500]!r}")
    return json.loads(raw) if raw else None


def create_runs(deployment, count, **body):
    return [call("POST", f"{WS}/deployments/{deployment}/runs", body)["id"] for _ in range(count)]


# Outside the data directory: a process job's sandbox may write only where its template allows,
# and never into pushpool's home.
token_dir = os.path.abspath(HOME.rstrip("/") + "-run-tokens")
os.makedirs(token_dir, exist_ok=True)
# The seeded job records its own run token, so the fuzzer can call the job endpoints as that job.
command = f'printf %s "$PUSHPOOL_RUN_TOKEN" > {shlex.quote(token_dir)}/"$PUSHPOOL_RUN_ID"; echo seeded run'

for pool in ("fuzz-pool", "fuzz-doomed-pool"):
    call("POST", f"{WS}/work_pools", {"name": pool, "type": "process"})
call("POST", f"{WS}/work_pools/fuzz-pool/queues", {"name": "fuzz-queue"})
for deployment in ("fuzz-deployment", "fuzz-doomed-deployment"):
    call(
        "POST",
        f"{WS}/deployments",
        {
            "name": deployment,
            "work_pool": "fuzz-pool",
            "work_queue": "fuzz-queue",
            "job_variables": {"command": command, "write_paths": [token_dir]},
            "parameters": {"greeting": "hello"},
        },
    )
# Schedules (issue 13), paused so the seeding server's scheduler makes no runs of them.
schedule = call(
    "POST", f"{WS}/deployments/fuzz-deployment/schedules", {"cron": "0 9 * * MON", "active": False}
)
doomed_schedule = call(
    "POST", f"{WS}/deployments/fuzz-deployment/schedules", {"interval": 3600, "active": False}
)
finished = create_runs("fuzz-deployment", 3)
tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
(scheduled,) = create_runs("fuzz-deployment", 1, scheduled_time=tomorrow)

for user in ("fuzz-user", "fuzz-doomed-user"):
    call("POST", f"{BASE}/api/users", {"name": user})
    call("POST", f"{WS}/members", {"user": user, "role": "developer"})
service_account = call("POST", f"{WS}/service_accounts", {"name": "fuzz-sa", "role": "viewer"})
doomed_account = call("POST", f"{WS}/service_accounts", {"name": "fuzz-doomed-sa", "role": "viewer"})
doomed_key = call("POST", f"{WS}/api_keys", {"name": "fuzz-doomed-key", "role": "viewer"})
rotated_key = call("POST", f"{WS}/api_keys", {"name": "fuzz-rotated-key", "role": "viewer"})
call("POST", f"{WS}/roles", {"name": "fuzz-role", "scopes": ["pools:read"]})
# Notification channels and inbound hooks (docs/notifications.md). The URL is a documentation
# address: the fuzzed server runs no delivery worker, so nothing is ever sent there.
for channel in ("fuzz-channel", "fuzz-doomed-channel"):
    call("POST", f"{WS}/notification_channels",
         {"name": channel, "kind": "webhook", "url": "https://203.0.113.10/fuzz"})
for hook in ("fuzz-hook", "fuzz-doomed-hook"):
    made = call("POST", f"{WS}/inbound_hooks", {"name": hook})
    if hook == "fuzz-hook":
        hook_slug = made["slug"]

# The finished runs: their job ran, so they have states, logs and a run token on disk.
deadline = time.monotonic() + 60
while True:
    states = [call("GET", f"{WS}/flow_runs/{run}")["state"]["type"] for run in finished]
    if all(s in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for s in states):
        break
    if time.monotonic() > deadline:
        sys.exit(f"schema-fuzz seed: the seeded runs did not finish within 60 s: {states}")
    time.sleep(0.2)
if states != ["COMPLETED"] * len(finished):
    sys.exit(f"schema-fuzz seed: the seeded runs ended {states}, expected COMPLETED")
run = finished[0]
with open(os.path.join(token_dir, run)) as f:
    run_token = f.read().strip()

values = {
    "FUZZ_RUN_ID": run,
    "FUZZ_RUN_TOKEN": run_token,
    "FUZZ_SCHEDULED_RUN_ID": scheduled,
    "FUZZ_SERVICE_ACCOUNT_ID": service_account["id"],
    "FUZZ_DOOMED_SERVICE_ACCOUNT_ID": doomed_account["id"],
    "FUZZ_DOOMED_KEY_ID": doomed_key["id"],
    "FUZZ_ROTATED_KEY_ID": rotated_key["id"],
    "FUZZ_SCHEDULE_ID": schedule["id"],
    "FUZZ_DOOMED_SCHEDULE_ID": doomed_schedule["id"],
    "FUZZ_HOOK_SLUG": hook_slug,
}
with open(OUT, "w") as f:
    for name, value in values.items():
        # Only ids and tokens, so the file is safe to source from bash.
        if not re.fullmatch(r"[A-Za-z0-9_.:-]+", str(value)):
            sys.exit(f"schema-fuzz seed: unexpected characters in {name}")
        f.write(f"{name}={value}\n")
print(f"schema-fuzz seed: workspace `default` seeded ({len(values)} ids in {OUT})", file=sys.stderr)
