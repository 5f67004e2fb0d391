"""/api/domains: the domains served, their DNS plan and check, and the operator's readiness override."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import ctx, json_body, note_audit
from mxd.api.schemas import BOOL, STR, list_of, obj, ref
from mxd.dnsrecords import MTA_STS_MODES
from mxd.errors import MxdError
from mxd.service import directory

TAG = "Domains"


@endpoint("GET", "/api/domains", "listDomains", "Domains of this organisation (all, for the operator)", TAG, "read",
          response=list_of("Domain"))
async def domains_list(request: Request, principal: Principal) -> Response:
    rows = await directory.domains(ctx(request), principal)
    return JSONResponse({"data": [directory.domain_dict(d) for d in rows]})


@endpoint("POST", "/api/domains", "createDomain", "Serve a domain (creates its DKIM keys)", TAG, "admin",
          body=obj(["domain"], domain=STR, name=dict(STR, description="alias of domain"),
                   org_id=dict(STR, description="operator only: the organisation it belongs to")),
          example={"domain": "example.net"}, status=201, response=ref("Domain"), also=((200, ref("Domain")),))
async def domains_create(request: Request, principal: Principal) -> Response:
    body = await json_body(request)
    name = body.get("domain") or body.get("name")
    if not isinstance(name, str):
        raise MxdError("bad_request", "body must hold {\"domain\": \"example.com\"}")
    domain, created = await directory.create_domain(ctx(request), principal, name, body.get("org_id"))
    return JSONResponse(directory.domain_dict(domain), status_code=201 if created else 200)


@endpoint("GET", "/api/domains/{domain}", "getDomain", "One domain", TAG, "read", response=ref("Domain"))
async def domain_get(request: Request, principal: Principal) -> Response:
    domain = await directory.domain(ctx(request), principal, request.path_params["domain"])
    return JSONResponse(directory.domain_dict(domain))


@endpoint("PATCH", "/api/domains/{domain}", "updateDomain",
          "Change a domain's settings: the MTA-STS policy it serves (off, testing, enforce)", TAG, "admin",
          body=obj(["mta_sts_mode"], mta_sts_mode={"enum": list(MTA_STS_MODES)}), example={"mta_sts_mode": "enforce"},
          response=ref("Domain"))
async def domain_update(request: Request, principal: Principal) -> Response:
    body = await json_body(request)
    mode = body.get("mta_sts_mode")            # checked by the service, with the other rules of the mode
    note_audit(request, mta_sts_mode=mode)
    domain = await directory.set_mta_sts_mode(ctx(request), principal, request.path_params["domain"], mode)
    return JSONResponse(directory.domain_dict(domain))


@endpoint("DELETE", "/api/domains/{domain}", "deleteDomain", "Stop serving a domain", TAG, "admin", status=204)
async def domain_delete(request: Request, principal: Principal) -> Response:
    await directory.delete_domain(ctx(request), principal, request.path_params["domain"])
    return Response(status_code=204)


@endpoint("PUT", "/api/domains/{domain}/readiness", "setDomainReadiness",
          "Mark a domain ready (or not) for outbound mail, overriding DNS", TAG, "admin", operator=True,
          body=obj(["ready"], ready=BOOL), example={"ready": True}, response=ref("Domain"))
async def domain_readiness(request: Request, principal: Principal) -> Response:
    """The operator's override; an organisation's domain becomes ready through DNS verification only."""
    body = await json_body(request)
    if not isinstance(body.get("ready"), bool):
        raise MxdError("bad_request", "body must hold {\"ready\": true|false}")
    note_audit(request, ready=body["ready"], override=True)
    domain = await directory.set_readiness(ctx(request), request.path_params["domain"], body["ready"])
    return JSONResponse(directory.domain_dict(domain))


@endpoint("GET", "/api/domains/{domain}/dns-plan", "domainDnsPlan", "The DNS records to publish", TAG, "read",
          response=ref("DnsPlan"))
async def domain_dns_plan(request: Request, principal: Principal) -> Response:
    c = ctx(request)
    domain = await directory.domain(c, principal, request.path_params["domain"])
    return JSONResponse(directory.dns_plan(c, domain))


@endpoint("GET", "/api/domains/{domain}/status", "domainStatus", "The DNS records as found now", TAG, "read",
          response=ref("DomainStatus"))
async def domain_status(request: Request, principal: Principal) -> Response:
    c = ctx(request)
    domain = await directory.domain(c, principal, request.path_params["domain"])
    result = await directory.check(c, domain)
    return JSONResponse(dict(directory.domain_dict(domain), **result.to_json()))


@endpoint("POST", "/api/domains/{domain}/verify", "verifyDomain", "Check DNS and mark the domain ready when it holds",
          TAG, "admin", response=ref("DomainStatus"))
async def domain_verify(request: Request, principal: Principal) -> Response:
    c = ctx(request)
    domain = await directory.domain(c, principal, request.path_params["domain"])
    domain, result, newly = await directory.verify(c, domain)
    note_audit(request, dns_ok=result.ok, ready=domain.ready)
    return JSONResponse(dict(directory.domain_dict(domain), **result.to_json(), verified_now=newly))
