"""mxd.trust (the trust signals and the verdict rule) and mxd.mailpolicy.quarantine_reasons: pure rules."""
from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mxd import mailpolicy, trust
from mxd.mime.parse import attachment, parse

OWN = ("example.com",)
DEFAULT = mailpolicy.blocked_types(None)


@dataclass
class Dkim:
    result: str
    domain: str


@dataclass
class Auth:
    spf: str = "none"
    spf_domain: str = ""
    dkim: list = field(default_factory=list)
    dmarc: str = "none"
    dmarc_policy: str | None = None


def message(from_: str = "Alice <alice@partner.org>", extra: str = "", body: str = "Hello.\r\n") -> bytes:
    return (f"From: {from_}\r\nTo: agent@example.com\r\nSubject: s\r\n{extra}\r\n{body}").encode()


def facts_of(raw: bytes) -> dict:
    return trust.facts(parse(raw), raw, lambda i: (attachment(raw, i) or (None, None))[1])


def judge(raw: bytes, auth=None, known=trust.Known(False, False), checks=None, local=False) -> dict:
    return trust.signals(facts_of(raw), auth=auth, checks=checks, known=known, own_domains=OWN, blocked=DEFAULT,
                         local=local)


def with_attachments(*files: tuple[str, str, bytes]) -> bytes:
    parts = ["--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"]
    import base64
    for name, ctype, data in files:
        parts.append(f"--b\r\nContent-Type: {ctype}\r\nContent-Disposition: attachment; filename=\"{name}\"\r\n"
                     f"Content-Transfer-Encoding: base64\r\n\r\n{base64.b64encode(data).decode()}\r\n")
    return message(extra="MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n",
                   body="".join(parts) + "--b--\r\n")


def zipped(*names: str, nested: dict[str, bytes] | None = None, encrypt: bool = False) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in names:
            zf.writestr(name, b"MZ payload")
        for name, data in (nested or {}).items():
            zf.writestr(name, data)
    data = buf.getvalue()
    if encrypt:      # the encrypted flag (bit 0) in the central directory, as a password-protected archive has it
        at = data.index(b"PK\x01\x02")
        data = data[:at + 8] + bytes([data[at + 8] | 1]) + data[at + 9:]
    return data


# ---------------------------------------------------------------- lookalike
@pytest.mark.parametrize("domain, resembles, how", [
    ("examp1e.com", "example.com", "homoglyph"),
    ("exarnple.com", "example.com", "homoglyph"),          # "rn" for "m": a multi-letter confusable
    ("xn--exmple-4nf.com", "example.com", "homoglyph"),    # exаmple.com with a Cyrillic а
    ("mail.examp1e.com", "example.com", "homoglyph"),      # compared on the registrable part
    ("exmaple.com", "example.com", "one_edit"),            # a transposition
    ("examples.com", "example.com", "one_edit"),
    ("rnicrosoft.com", "microsoft.com", "homoglyph"),
    ("example.com.evil.net", "example.com", "embedded"),
    ("login.microsoft.com.x.co.uk", "microsoft.com", "embedded"),
])
def test_lookalikes_of_a_reference_are_caught(domain, resembles, how):
    assert trust.lookalike(domain, ["example.com", "microsoft.com"]) == \
        {"domain": domain, "resembles": resembles, "how": how}


@pytest.mark.parametrize("domain", ["example.com", "mail.example.com", "a.b.example.com", "example.org",
                                    "partner.org", "gmail.com", "example.co.uk", "", "x" * 300 + ".com"])
def test_the_domain_itself_its_subdomains_and_unrelated_names_are_not_lookalikes(domain):
    assert trust.lookalike(domain, ["example.com"]) is None


def test_a_latin_name_mixed_with_cyrillic_is_a_lookalike_without_a_reference():
    assert trust.lookalike("xn--pple-43d.com", []) == {"domain": "xn--pple-43d.com", "resembles": None,
                                                        "how": "mixed_script"}
    assert trust.lookalike("xn--mnchen-3ya.de", []) is None          # münchen.de: one script


def test_short_names_are_not_one_edit_lookalikes():
    assert trust.lookalike("abd.com", ["abc.com"]) is None


@pytest.mark.parametrize("domain", ["examp1e.com", "exarnple.com", "xn--exmple-4nf.com"])
def test_a_lookalike_author_is_suspicious(domain):
    doc = judge(message(f"Boss <boss@{domain}>"), auth=Auth(dmarc="pass"))
    assert doc["lookalike"]["resembles"] == "example.com"
    assert doc["verdict"] == "suspicious" and doc["reasons"][0]["code"] == "lookalike"


# ---------------------------------------------------------------- authentication
def test_dmarc_pass_authenticates():
    assert trust.authentication(Auth(dmarc="pass"), "partner.org")["how"] == "dmarc"


def test_without_dmarc_an_aligned_dkim_or_spf_pass_authenticates():
    dkim = trust.authentication(Auth(dkim=[Dkim("pass", "mail.partner.org")]), "partner.org")
    assert dkim["authenticated"] and dkim["how"] == "dkim"
    spf = trust.authentication(Auth(spf="pass", spf_domain="bounce.partner.org"), "partner.org")
    assert spf["authenticated"] and spf["how"] == "spf"


@pytest.mark.parametrize("auth", [
    Auth(spf="pass", spf_domain="other.net"),                       # not aligned
    Auth(dkim=[Dkim("pass", "other.net")]),
    Auth(dkim=[Dkim("fail", "partner.org")]),
    Auth(dmarc="fail", spf="pass", spf_domain="partner.org"),      # a DMARC record that fails wins
    Auth(dmarc="temperror", spf="pass", spf_domain="partner.org"),
    None,                                                           # not checked
])
def test_what_does_not_authenticate(auth):
    assert trust.authentication(auth, "partner.org")["authenticated"] is False


def test_dmarc_fail_is_suspicious():
    doc = judge(message(), auth=Auth(dmarc="fail", dmarc_policy="quarantine"))
    assert doc["verdict"] == "suspicious" and [r["code"] for r in doc["reasons"]] == ["dmarc_fail"]


def test_unauthenticated_mail_claiming_an_own_domain_is_suspicious():
    doc = judge(message("CEO <ceo@example.com>"), auth=Auth(spf="softfail"))
    assert doc["verdict"] == "suspicious" and doc["reasons"][0]["code"] == "own_domain_unauthenticated"
    assert doc["lookalike"] is None


# ---------------------------------------------------------------- first contact and the verdict
def test_first_contact_gives_both_facts_and_is_unverified():
    doc = judge(message(), auth=Auth(dmarc="pass"))
    assert doc["first_contact"] == {"address": True, "domain": True}
    assert doc["verdict"] == "unverified" and [r["code"] for r in doc["reasons"]] == ["first_contact"]
    doc = judge(message(), auth=Auth(dmarc="pass"), known=trust.Known(False, True))
    assert doc["first_contact"] == {"address": True, "domain": False}


def test_a_known_authenticated_correspondent_is_trusted():
    doc = judge(message(), auth=Auth(dmarc="pass"), known=trust.Known(True, True, ("partner.org",)))
    assert doc["verdict"] == "trusted" and doc["reasons"] == [] and doc["authenticated"] is True
    assert doc["author"] == "alice@partner.org"


def test_a_known_but_unauthenticated_author_is_unverified():
    doc = judge(message(), auth=Auth(dmarc="none"), known=trust.Known(True, True))
    assert doc["verdict"] == "unverified" and [r["code"] for r in doc["reasons"]] == ["not_authenticated"]


def test_local_mail_is_authenticated_by_mxd():
    doc = judge(message("Me <me@example.com>"), local=True, known=trust.Known(True, True))
    assert doc["authentication"]["how"] == "local" and doc["verdict"] == "trusted"


def test_a_lookalike_of_a_correspondent_domain_counts():
    doc = judge(message("Bob <bob@partnor.org>"), auth=Auth(dmarc="pass"),
                known=trust.Known(False, False, ("partner.org",)))
    assert doc["lookalike"] == {"domain": "partnor.org", "resembles": "partner.org", "how": "one_edit"}


# ---------------------------------------------------------------- display name, Reply-To
@pytest.mark.parametrize("from_, why", [
    ('"ceo@example.com" <x@evil.net>', "ceo@example.com"),
    ('"Bob (bob@partner.org)" <bob@evil.net>', "bob@partner.org"),
    ('"Example.com Support" <help@evil.net>', "example.com"),
])
def test_display_name_spoofs(from_, why):
    doc = judge(message(from_), auth=Auth(dmarc="pass"))
    assert why in doc["display_name_spoof"]["why"] and doc["verdict"] == "suspicious"
    assert doc["reasons"][0]["code"] == "display_name_spoof"


@pytest.mark.parametrize("from_", ['"alice@partner.org" <alice@partner.org>', "Alice Smith <alice@partner.org>",
                                   "alice@partner.org", '"Example.com Support" <help@example.com>'])
def test_honest_display_names(from_):
    assert judge(message(from_), auth=Auth(dmarc="pass"))["display_name_spoof"] is None


def test_reply_to_another_domain_is_a_mismatch_and_not_trusted():
    raw = message(extra="Reply-To: Pay <pay@elsewhere.net>\r\n")
    doc = judge(raw, auth=Auth(dmarc="pass"), known=trust.Known(True, True))
    assert doc["reply_to_mismatch"] == {"author_domain": "partner.org", "reply_to": ["elsewhere.net"]}
    assert doc["verdict"] == "unverified" and [r["code"] for r in doc["reasons"]] == ["reply_to_mismatch"]
    same = judge(message(extra="Reply-To: list@lists.partner.org\r\n"), auth=Auth(dmarc="pass"))
    assert same["reply_to_mismatch"] is None


# ---------------------------------------------------------------- attachments
def test_blocked_types_double_extensions_and_executable_content_types_are_risky():
    raw = with_attachments(("invoice.pdf.exe", "application/octet-stream", b"MZ"),
                           ("report.docm", "application/octet-stream", b"x"),
                           ("data.bin", "application/x-msdownload", b"MZ"),
                           ("photo.jpg", "image/jpeg", b"\xff\xd8"),
                           ("bill\u202egpj.exe", "application/octet-stream", b"MZ"))
    doc = judge(raw, auth=Auth(dmarc="pass"))
    whys = {r["name"]: r["why"] for r in doc["risky_attachments"]}
    assert whys["invoice.pdf.exe"] == "double extension .pdf.exe"
    assert whys["report.docm"] == "file type .docm"
    assert whys["data.bin"] == "content type application/x-msdownload"
    assert "direction controls" in whys["bill\u202egpj.exe"]
    assert "photo.jpg" not in whys and doc["risky_count"] == 4
    assert doc["verdict"] == "suspicious" and doc["reasons"][0]["code"] == "risky_attachments"


def test_members_of_zip_archives_are_checked_nested_too():
    inner = zipped("deep/run.js")
    raw = with_attachments(("docs.zip", "application/zip", zipped("readme.txt", "setup.exe", nested={"more.zip": inner})))
    doc = judge(raw, auth=Auth(dmarc="pass"))
    assert {(r["name"], r["why"]) for r in doc["risky_attachments"]} == {
        ("setup.exe", "file type .exe in docs.zip"), ("deep/run.js", "file type .js in docs.zip/more.zip")}
    assert trust.blocked_found(facts_of(raw)["attachments"], DEFAULT) == ["docs.zip/setup.exe",
                                                                        "docs.zip/more.zip/deep/run.js"]


def test_encrypted_and_broken_archives_are_flagged():
    raw = with_attachments(("locked.zip", "application/zip", zipped("a.txt", encrypt=True)),
                           ("broken.zip", "application/zip", b"PK\x03\x04 not a zip at all"))
    whys = {r["name"]: r["why"] for r in judge(raw)["risky_attachments"]}
    assert whys["a.txt"].startswith("an encrypted archive member")
    assert whys["broken.zip"].startswith("archive not readable")


def test_a_zip_with_many_members_is_read_up_to_the_bound():
    raw = with_attachments(("many.zip", "application/zip", zipped(*[f"f{i}.txt" for i in range(1500)])))
    entries = facts_of(raw)["attachments"]
    assert len(entries) == 1 + trust.MAX_MEMBERS and "1500 members" in entries[0]["note"]


def test_a_thousand_attachments_are_bounded_and_flagged():
    raw = with_attachments(*[(f"f{i}.exe", "application/octet-stream", b"MZ") for i in range(1000)])
    doc = judge(raw)
    parsed = len(parse(raw).attachments)          # the parser walks at most MAX_PARTS parts
    assert parsed >= 990 and doc["risky_count"] == parsed
    assert len(doc["risky_attachments"]) == trust.MAX_RISKY_SHOWN
    assert doc["verdict"] == "suspicious"


def test_the_mailbox_list_decides_what_is_risky():
    raw = with_attachments(("tool.exe", "application/octet-stream", b"MZ"), ("notes.txt", "text/plain", b"x"))
    fact = facts_of(raw)
    assert trust.risky(fact["attachments"], frozenset({"txt"})) == [{"name": "notes.txt", "why": "file type .txt"}]
    assert trust.risky(fact["attachments"], frozenset()) == []


# ---------------------------------------------------------------- spam
def test_a_spam_verdict_is_kept_and_a_quarantine_action_is_suspicious():
    checks = {"spam": {"action": "quarantine", "score": 9.5, "required_score": 15, "symbols": {"BAYES_SPAM": 5.0}}}
    doc = judge(message(), auth=Auth(dmarc="pass"), checks=checks, known=trust.Known(True, True))
    assert doc["spam"] == {"score": 9.5, "required_score": 15, "action": "quarantine", "symbols": {"BAYES_SPAM": 5.0}}
    assert doc["verdict"] == "suspicious" and doc["reasons"][0]["code"] == "spam"
    clean = judge(message(), auth=Auth(dmarc="pass"), checks={"spam": {"action": "accept", "score": 0.1}},
                  known=trust.Known(True, True))
    assert clean["verdict"] == "trusted" and clean["spam"]["score"] == 0.1
    high = judge(message(), auth=Auth(dmarc="pass"), known=trust.Known(True, True),
                 checks={"spam": {"action": "accept", "score": 16.0, "required_score": 15.0}})
    assert high["verdict"] == "suspicious" and high["reasons"][0]["code"] == "spam"


# ---------------------------------------------------------------- the mailbox policy's quarantine reasons
def policy(**inbound) -> dict:
    return mailpolicy.normalise({"inbound": inbound})


@pytest.mark.parametrize("rules, kwargs, codes", [
    ({"block_senders": ["evil.net"]}, {"author": "x@evil.net"}, ["sender_blocked"]),
    ({"block_senders": ["evil.net"], "allow_senders": ["evil.net"]}, {"author": "x@evil.net"}, ["sender_blocked"]),
    ({"allow_senders": ["partner.org"]}, {"author": "x@other.net"}, ["sender_not_allowed"]),
    ({"allow_senders": ["partner.org"]}, {"author": ""}, ["sender_not_allowed"]),
    ({"allow_senders": ["*.partner.org"]}, {"author": "x@eu.partner.org"}, []),
    ({"require_authenticated": True}, {"authenticated": False}, ["unauthenticated"]),
    ({"require_authenticated": True}, {"authenticated": True}, []),
    ({}, {"blocked_attachments": ["a.exe"]}, ["blocked_attachment"]),
    ({"max_message_size": 100}, {"size": 101}, ["too_large"]),
    ({"max_message_size": 100}, {"size": 100}, []),
    ({"require_authenticated": True, "max_message_size": 10}, {"size": 11}, ["unauthenticated", "too_large"]),
])
def test_each_policy_rule_gives_its_reason(rules, kwargs, codes):
    args = {"author": "a@partner.org", "authenticated": False, "blocked_attachments": [], "size": 10, **kwargs}
    assert [r["code"] for r in mailpolicy.quarantine_reasons(policy(**rules), **args)] == codes


def test_no_policy_quarantines_nothing_but_default_blocked_types():
    assert mailpolicy.quarantine_reasons(None, author="", authenticated=False, blocked_attachments=[],
                                         size=10 ** 9) == []
    assert mailpolicy.quarantine_reasons(None, author="", authenticated=False, blocked_attachments=["x.exe"],
                                         size=1)[0]["code"] == "blocked_attachment"


# ---------------------------------------------------------------- hostile input
names = st.text(st.characters(blacklist_categories=("Cs",)), max_size=200)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(display=names, local=st.text("abc.+-_", min_size=1, max_size=30), domain=names, reply=names)
def test_hostile_headers_never_break_the_signals(display, local, domain, reply):
    raw = (f'From: "{display}" <{local}@{domain}>\r\nReply-To: {reply}\r\nTo: a@example.com\r\n\r\nx\r\n'
           .encode("utf-8", "surrogatepass"))
    doc = judge(raw, auth=Auth(dmarc="pass"))
    assert doc["verdict"] in ("trusted", "unverified", "suspicious")
    import json
    json.dumps(doc)


@settings(max_examples=200, deadline=None)
@given(domain=st.text(max_size=300), refs=st.lists(st.text(max_size=80), max_size=20))
def test_hostile_domains_never_break_lookalike(domain, refs):
    found = trust.lookalike(domain.lower(), [r.lower() for r in refs])
    assert found is None or found["domain"] == domain.lower()


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=2000), name=names)
def test_hostile_attachments_never_break_the_facts(data, name):
    raw = with_attachments((name.replace('"', "").replace("\r", "").replace("\n", "") + ".zip", "application/zip",
                            b"PK\x03\x04" + data))
    fact = facts_of(raw)
    assert "error" not in fact
    trust.risky(fact["attachments"], DEFAULT)
