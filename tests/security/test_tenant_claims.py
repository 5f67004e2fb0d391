"""Threat: an organisation (a tenant with its own admin key) claims what speaks for the server.

On the operator's domain, which organisations share for their agents' mailboxes, a tenant that holds
admin@, hostmaster@, webmaster@ ... receives the mail certificate authorities send to validate the
domain (CA/Browser Forum BR 3.2.2.4.4), and postmaster@, abuse@, security@ ... the reports and complaints
meant for the operator (RFC 2142). A tenant that registers the server's hostname or one of the operator's
domains (or a subdomain) as its own, or any domain it does not control, receives that domain's mail at
once. So: the role names are the operator's on shared domains; the server's names are never an
organisation's; and an organisation's domain is routed only after its ownership proof, a TXT record
`_mxd-verify.<domain>` holding `mxd-verify=<token>`, is found.
"""
from __future__ import annotations

import base64
import json
import smtplib

import pytest

from tests.security.tenant_world import HOSTNAME, SHARED, start

pytestmark = pytest.mark.slow

ROLE_NAMES = ["admin", "Administrator", "webmaster", "hostmaster", "postmaster", "abuse", "security", "noreply",
              "no-reply", "mailer-daemon", "bounces", "root", "noc", "info", "support"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = start(tmp_path_factory.mktemp("tenant-claims") / "data")
    yield w
    w.stop()


@pytest.fixture(scope="module")
def tenant(world):
    return world.organisation("org_tenant")


def _rcpt(world, address: str) -> tuple[int, str]:
    with smtplib.SMTP("127.0.0.1", world.mxd.mx_port, timeout=30) as s:
        s.ehlo("client.remote.test")
        s.mail("someone@remote.test")
        code, text = s.rcpt(address)
        return code, text.decode()


def test_role_addresses_on_the_shared_domain_stay_the_operators(world, tenant):
    for local in ROLE_NAMES:
        r = world.agent_mailbox(tenant, local)
        assert r.status_code == 403, (local, r.text)
        err = r.json()["error"]
        assert err["code"] == "reserved_address" and "operator" in err["message"] and err["fix"], err
        # ... also when the operator makes it for the organisation (the owner, not the caller, decides)
        r = world.mxd.api("POST", "/api/mailboxes", json={"address": f"{local}@{SHARED}", "org_id": "org_tenant"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "reserved_address", (local, r.text)
    # plus-addressing or case cannot get around it
    assert world.agent_mailbox(tenant, "ADMIN").status_code == 403
    assert world.agent_mailbox(tenant, "admin+x").status_code == 400
    # An ordinary name is fine, and the operator may hold the role names itself.
    assert world.agent_mailbox(tenant, "helpdesk-bot").status_code == 201
    r = world.mxd.api("POST", "/api/mailboxes", json={"address": f"admin@{SHARED}"})
    assert r.status_code == 201 and r.json()["org_id"] is None
    code, _ = _rcpt(world, f"admin@{SHARED}")
    assert code == 250
    # Nothing of the tenant's answers to a role name at the MX.
    tenant_boxes = {b["address"] for b in world.call("GET", "/api/mailboxes", tenant).json()["data"]}
    assert not {f"{n.lower()}@{SHARED}" for n in ROLE_NAMES} & tenant_boxes


def test_no_route_hands_a_role_name_to_an_organisation(world, tenant):
    """Rows from before the names were reserved, and a catch-all the operator points at a tenant."""
    box = world.agent_mailbox(tenant, "catch-bot").json()
    [(domain_id,)] = world.sql('SELECT "id" FROM "domain" WHERE "name" = ?', (SHARED,))
    world.sql('INSERT INTO "mailbox" ("id", "address", "domain_id", "org_id", "display_name", "created_at") '
              "VALUES ('mbx_legacyweb', ?, ?, 'org_tenant', '', 0)", (f"webmaster@{SHARED}", domain_id))
    r = world.mxd.api("PUT", f"/api/catchalls/{SHARED}", json={"target": box["address"]})   # reloads the directory
    assert r.status_code == 200, r.text
    try:
        for local in ("webmaster", "WebMaster+x", "security", "hostmaster"):
            code, text = _rcpt(world, f"{local}@{SHARED}")
            assert code == 550 and "5.1.1" in text, (local, code, text)
        assert _rcpt(world, f"anything-else@{SHARED}")[0] == 250            # the catch-all itself still works
        assert _rcpt(world, f"abuse@{SHARED}")[0] == 250                    # the operator's own role names too
    finally:
        world.mxd.api("PUT", f"/api/catchalls/{SHARED}", json={"target": None})


@pytest.mark.parametrize("name", [HOSTNAME, SHARED, f"sub.{SHARED}", f"deep.sub.{HOSTNAME}", "MX.Example.Test."])
def test_the_servers_names_are_never_an_organisations_domain(world, tenant, name):
    for path in ("/v1/domains", "/api/domains"):
        r = world.call("POST", path, tenant, json={"domain": name})
        assert r.status_code == 409, (path, name, r.text)
        err = r.json()["error"]
        assert err["code"] == "domain_reserved" and err["fix"], err
    r = world.mxd.api("POST", "/api/domains", json={"domain": name, "org_id": "org_tenant"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "domain_reserved"
    assert name.lower().rstrip(".") not in {d["name"] for d in world.call("GET", "/api/domains", tenant).json()["data"]}
    # mail for the hostname is not routed to any tenant
    code, _ = _rcpt(world, f"postmaster@{HOSTNAME}")
    assert code == 550


def _ses(raw: bytes, to: str) -> dict:
    inner = {"notificationType": "Received", "mail": {"messageId": f"ses-{to}", "source": "x@remote.test",
                                                      "destination": [to]},
             "receipt": {"recipients": [to], "action": {"type": "SNS", "encoding": "BASE64"}},
             "content": base64.b64encode(raw).decode()}
    return {"Type": "Notification", "MessageId": "sns-1", "Message": json.dumps(inner)}


def test_an_organisation_domain_gets_mail_only_after_its_ownership_proof(world, tenant):
    r = world.call("POST", "/v1/domains", tenant, json={"domain": "tenant-owned.test"})
    assert r.status_code == 201, r.text
    dom = r.json()
    assert dom["ownership_verified"] is False and dom["inbound_status"] == "pending"
    [proof] = [x for x in dom["dns_records"] if x["kind"] == "ownership"]
    assert proof["name"] == "_mxd-verify.tenant-owned.test" and proof["type"] == "TXT" and proof["required"]
    assert proof["value"].startswith("mxd-verify=") and len(proof["value"]) > len("mxd-verify=") + 20
    plan = world.call("GET", "/api/domains/tenant-owned.test/dns-plan", tenant).json()["records"]
    assert proof["value"] in [x["value"] for x in plan if x["kind"] == "ownership"]
    assert proof["value"] in [x["value"] for x in world.call("GET", f"/v1/domains/{dom['id']}/dns",
                                                             tenant).json()["records"]]
    r = world.agent_mailbox(tenant, "bot", domain_id=dom["id"])
    assert r.status_code == 201 and r.json()["address"] == "bot@tenant-owned.test"
    assert world.call("POST", "/api/aliases", tenant, json={"address": "admin@tenant-owned.test",
                                                              "targets": ["bot@tenant-owned.test"]}).status_code == 201

    def refused_everywhere() -> None:
        code, text = _rcpt(world, "bot@tenant-owned.test")
        assert code == 550 and "5.7.1" in text, (code, text)
        r = world.call("POST", "/api/inbound/simulate", tenant, json={"to": ["bot@tenant-owned.test"], "text": "x"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "domain_not_served", r.text
        r = world.call("POST", "/api/inbound/ses", tenant,
                       json=_ses(b"From: x@remote.test\r\nSubject: s\r\n\r\nbody\r\n", "bot@tenant-owned.test"))
        assert r.status_code == 422 and r.json()["error"]["code"] == "domain_not_served", r.text

    refused_everywhere()
    # Every other record published, the MX pointing here: still not the tenant's until the token is there.
    for rec in plan:
        if rec["kind"] == "ownership":
            continue
        if rec["type"] == "MX":
            world.dns.set(rec["name"], "MX", [tuple(int(v) if v.isdigit() else v for v in rec["value"].split())])
        else:
            world.dns.set(rec["name"], rec["type"], [rec["value"]])
    world.dns.set(proof["name"], "TXT", ["mxd-verify=someone-elses-token"])
    r = world.call("POST", f"/v1/domains/{dom['id']}/verify", tenant)
    assert r.status_code == 200 and r.json()["ownership_verified"] is False and r.json()["status"] == "pending"
    assert r.json()["inbound_status"] == "pending"
    refused_everywhere()

    world.dns.set(proof["name"], "TXT", [proof["value"]])
    r = world.call("POST", f"/v1/domains/{dom['id']}/verify", tenant)
    assert r.status_code == 200 and r.json()["ownership_verified"] is True, r.text
    assert r.json()["inbound_status"] == "verified" and r.json()["status"] == "verified"
    assert _rcpt(world, "bot@tenant-owned.test")[0] == 250
    assert _rcpt(world, "admin@tenant-owned.test")[0] == 250             # its own domain: its own role names
    r = world.call("POST", "/api/inbound/simulate", tenant, json={"to": ["bot@tenant-owned.test"], "text": "x"})
    assert r.status_code == 202, r.text
