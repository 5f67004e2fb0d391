"""Threat: an MCP tool argument that the tool does not expect turns into an internal error or a guess.

`poll_inbox` and `ack_inbox` work on one mailbox. With `mailbox: ""`, an operator token (which sees every
mailbox) got an internal error, and a token limited to mailboxes had the first of them chosen for it, so
an acknowledgement could land in a mailbox the agent did not name. An empty mailbox is now a clear
`bad_request` tool error that says how to name one.
"""
from __future__ import annotations

import json
from typing import Any

import pytest
from mcp import ClientSession

from tests.support.daemon import running_daemon
from tests.support.mcpclient import session

AGENT, OTHER = "agent@example.test", "other@example.test"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_daemon(tmp_path_factory.mktemp("mcp-args") / "data", mailboxes=[AGENT, OTHER]) as proc:
        yield proc


async def _error(s: ClientSession, tool: str, **arguments: Any) -> dict:
    r = await s.call_tool(tool, arguments)
    assert r.is_error, r.content
    return json.loads(r.content[0].text)["error"]


@pytest.mark.parametrize("mailbox", ["", "   "])
async def test_an_empty_mailbox_is_a_clear_error(server, mailbox):
    limited = server.token(["read"], [AGENT, OTHER], name=f"two-boxes-{len(mailbox)}")
    for token in (server.admin_token, limited):
        async with session(server, token) as s:
            for tool, args in (("poll_inbox", {}), ("ack_inbox", {"message_ids": ["msg_x"]})):
                err = await _error(s, tool, mailbox=mailbox, **args)
                assert err["code"] == "bad_request", (tool, err)
                assert "mailbox" in err["message"] and f'{tool}(mailbox=' in err["fix"]
