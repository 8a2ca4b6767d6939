"""Run ``KnativeInvocationTrigger``s the way Airflow's triggerer does: in one process, one event
loop, all at once, from their serialized kwargs (what the trigger table holds).

``python trigger_host.py KWARGS.json`` prints one JSON line per event as it fires:
``{"id": <invocation id>, "event": <payload>}``. Killing this process mid-call and starting it
again with the same file is a triggerer dying and Airflow restoring its triggers elsewhere.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from airflow_provider_knative.triggers import KnativeInvocationTrigger


async def _one(kwargs: dict[str, Any]) -> None:
    async for event in KnativeInvocationTrigger(**kwargs).run():
        print(json.dumps({"id": kwargs["invocation_id"], "event": event.payload}), flush=True)
        return


async def _all(path: str) -> None:
    with open(path) as fh:
        triggers = json.load(fh)
    await asyncio.gather(*(_one(kwargs) for kwargs in triggers))


if __name__ == "__main__":
    asyncio.run(_all(sys.argv[1]))
