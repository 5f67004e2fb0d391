"""/v1/domains: an organisation's custom domains: onboarding, the DNS records to publish, verification."""
from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mxd.access import Principal
from mxd.api.endpoint import endpoint
from mxd.api.http import ctx, json_body, note_audit
from mxd.api.schemas import STR, list_of, obj, ref
from mxd.api.v1.shapes import domain_dict
from mxd.dnsrecords import MTA_STS_MODES
from mxd.errors import MxdError
from mxd.service import directory

TAG = "Domains"


@endpoint("GET", "/v1/domains", "listDomainsV1", "Domains", TAG, "read", response=list_of("V1Domain"))
async def domains_list(request: Request, principal: Principal) -> Response:
    return JSONResponse({"data": [domain_dict(d) for d in await directory.domains(ctx(request), principal)]})


@endpoint("POST", "/v1/domains", "createDomainV1", "Start custom-domain onboarding", TAG, "admin",
          body=obj(["domain"], domain=STR, name=dict(STR, description="alias of domain"),
                   organization_id=dict(STR, description="operator only")),
          example={"domain": "mail.example.org"}, status=201, response=ref("V1DomainCreated"),
          also=((200, ref("V1DomainCreated")),))
async def domains_create(request: Request, principal: Principal) -> Response:
    body = await json_body(request)
    name = body.get("domain") or body.get("name")
    if not isinstance(name, str):
        raise MxdError("bad_request", "body must hold {\"domain\": \"mail.example.com\"}")
    c = ctx(request)
    domain, created = await directory.create_domain(c, principal, name, body.get("organization_id"),
                                                    only_same_org=True, org_field="organization_id")
    out = domain_dict(domain)
    out["dns_records"] = directory.dns_plan(c, domain)["records"]
    return JSONResponse(out, status_code=201 if created else 200)


@endpoint("GET", "/v1/domains/{domain_id}", "getDomainV1", "One domain", TAG, "read", response=ref("V1Domain"))
async def domain_get(request: Request, principal: Principal) -> Response:
    return JSONResponse(domain_dict(await directory.domain_by_id(ctx(request), principal,
                                                                 request.path_params["domain_id"])))


@endpoint("PATCH", "/v1/domains/{domain_id}", "updateDomainV1",
          "Change a domain's settings: the MTA-STS policy it serves (off, testing, enforce)", TAG, "admin",
          body=obj(["mta_sts_mode"], mta_sts_mode={"enum": list(MTA_STS_MODES)}), example={"mta_sts_mode": "enforce"},
          response=ref("V1Domain"))
async def domain_update(request: Request, principal: Principal) -> Response:
    body = await json_body(request)
    mode = body.get("mta_sts_mode")            # checked by the service, with the other rules of the mode
    c = ctx(request)
    domain = await directory.domain_by_id(c, principal, request.path_params["domain_id"])
    note_audit(request, mta_sts_mode=mode)
    return JSONResponse(domain_dict(await directory.set_mta_sts_mode(c, principal, domain.name, mode)))


@endpoint("GET", "/v1/domains/{domain_id}/dns", "domainDnsV1", "The DNS records to publish", TAG, "read",
          response=ref("V1DnsPlan"))
async def domain_dns(request: Request, principal: Principal) -> Response:
    c = ctx(request)
    domain = await directory.domain_by_id(c, principal, request.path_params["domain_id"])
    return JSONResponse(dict(directory.dns_plan(c, domain), domain_id=domain.id))


@endpoint("POST", "/v1/domains/{domain_id}/verify", "verifyDomainV1",
          "Check DNS; the domain becomes verified when it holds", TAG, "admin", response=ref("V1DomainVerified"))
async def domain_verify(request: Request, principal: Principal) -> Response:
    c = ctx(request)
    domain = await directory.domain_by_id(c, principal, request.path_params["domain_id"])
    domain, result, newly = await directory.verify(c, domain)
    note_audit(request, dns_ok=result.ok, ready=domain.ready)
    out = dict(domain_dict(domain), **result.to_json(), verified_now=newly)
    inbound = (directory.mx_found(result) or domain.ready) and out["ownership_verified"]     # an unproven domain gets no mail
    out.update(domain=domain.name, inbound_status="verified" if inbound else "pending")
    return JSONResponse(out)
