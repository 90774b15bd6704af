"""Drives a relay's /mcp with the official MCP Python SDK, as a third-party client.

Usage: python_sdk.py URL CODE PID_FILE [API_KEY]. Prints one JSON object per line, each
with a "step" naming what it saw; tests/third_party_clients.rs asserts on them.
"""

import json
import logging
import os
import sys
import time

import anyio
import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

URL, CODE, PID_FILE = sys.argv[1], sys.argv[2], sys.argv[3]
API_KEY = sys.argv[4] if len(sys.argv) > 4 else None


class Warnings(logging.Handler):
    """Collects what the SDK warns its user about (e.g. "Session termination failed")."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.seen = []

    def emit(self, record):
        detail = f": {record.exc_info[1]!r}" if record.exc_info else ""
        self.seen.append(record.getMessage() + detail)


WARNINGS = Warnings()
logging.getLogger().addHandler(WARNINGS)


def say(step, **facts):
    print(json.dumps({"step": step, **facts}), flush=True)


def result(step, res):
    text = "".join(getattr(c, "text", "") for c in res.content)
    say(step, is_error=res.is_error, text=text, structured=res.structured_content,
        text_bytes=len(text.encode()), structured_bytes=len(json.dumps(res.structured_content).encode()))


async def calls(mode):
    async with Client(URL, mode=mode) as client:
        say("connected", mode=mode, protocol=client.protocol_version)
        tools = await client.list_tools()
        say("tools", tools=[t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools.tools])
        exec_args = {"code": CODE, "command": "echo hi"}
        result("timeout_number", await client.call_tool("remote_exec", {**exec_args, "timeout_ms": 5000}))
        result("timeout_string", await client.call_tool("remote_exec", {**exec_args, "timeout_ms": "5000"}))
        result("wrong_type", await client.call_tool("remote_exec", {**exec_args, "timeout_ms": "abc"}))
        result("out_of_range", await client.call_tool("remote_exec", {**exec_args, "timeout_ms": 5}))
        result("missing_field", await client.call_tool("remote_exec", {"code": CODE}))
        big = {"code": CODE, "command": "head -c 3000000 /dev/zero | base64"}
        result("truncated", await client.call_tool("remote_exec", big))
        result("status", await client.call_tool("session_status", {"code": CODE}))
        await job(client)
        once = {"code": CODE, "command": f"echo once >> {PID_FILE}.count; echo ran", "idempotency_key": f"key-{mode}"}
        result("keyed_first", await client.call_tool("remote_exec", once))
        result("keyed_again", await client.call_tool("remote_exec", once))


async def job(client):
    """Starts a job and reads its output by offset until it is done."""
    started = await client.call_tool("remote_job_start", {"code": CODE, "command": "echo job-out; sleep 0.3; echo job-end"})
    result("job_started", started)
    job_id, offset, text, page = started.structured_content["jobId"], 0, "", {}
    for _ in range(100):
        args = {"code": CODE, "job_id": job_id, "offset": offset, "wait_ms": 2000}
        page = (await client.call_tool("remote_job_output", args)).structured_content
        text, offset = text + page["text"], page["nextOffset"]
        if page["done"]:
            break
    say("job_output", text=text, state=page["job"]["state"], exit_code=page["job"].get("exitCode"))


async def close_during_sleep():
    """Opens a session, starts `sleep`, and leaves (the SDK sends DELETE) while it runs."""
    command = f"echo $$ > {PID_FILE}; exec sleep 60"
    async with anyio.create_task_group() as outer:
        async with Client(URL, mode="legacy") as client:
            say("session", protocol=client.protocol_version)

            async def sleeper():
                try:
                    res = await client.call_tool("remote_exec", {"code": CODE, "command": command})
                    say("sleeper_result", is_error=res.is_error)
                except Exception as e:  # the session went away under it
                    say("sleeper_ended", error=type(e).__name__)

            outer.start_soon(sleeper)
            for _ in range(500):
                if os.path.exists(PID_FILE) and open(PID_FILE).read().strip():
                    break
                await anyio.sleep(0.02)
            say("sleeping", pid=int(open(PID_FILE).read()))
        say("closed", at=time.time())
        outer.cancel_scope.cancel()


async def machines():
    """list_machines: refused without an account; with one, after a first command links the machine."""
    async with Client(URL, mode="auto") as client:
        result("machines_anonymous", await client.call_tool("list_machines", {}))
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        async with Client(streamable_http_client(URL, http_client=http), mode="auto") as client:
            await client.call_tool("remote_exec", {"code": CODE, "command": "true"})
            result("machines", await client.call_tool("list_machines", {}))


async def main():
    await calls("auto")
    await calls("legacy")
    if API_KEY:
        await machines()
    await close_during_sleep()
    say("warnings", warnings=WARNINGS.seen)


anyio.run(main)
