"""What the checks at DATA decide from authentication results and the spam engine's verdict (RFC 7489
6.3: p=reject refuses, p=quarantine quarantines; SPF -all without DMARC refuses when configured;
temporary errors accept), and the stored form of the results."""
from __future__ import annotations

import pytest

from mxd.authn import AuthResults, DkimResult, DmarcResult, SpfResult
from mxd.config import Config
from mxd.defences.gate import auth_from_json, auth_to_json, judge_auth, judge_spam
from mxd.defences.spamengine import SpamVerdict


def _auth(spf="fail", dmarc="fail", policy="reject", domain="forged.test", reason="") -> AuthResults:
    return AuthResults(spf, domain, [DkimResult("fail", domain, "s1", "rsa-sha256", "abcdefgh", "bad sig")], dmarc,
                       policy, domain, f"mx.example.test; spf={spf}; dmarc={dmarc}",
                       SpfResult(spf, domain, "mailfrom", f"a@{domain}"), DmarcResult(dmarc, domain, policy, reason))


def _cfg(**kw) -> Config:
    return Config(**kw)


def test_dmarc_reject_refuses_naming_the_domain():
    d = judge_auth(_cfg(), _auth(), "192.0.2.1")
    assert d.reply is not None and d.reply.startswith("550 5.7.1 ") and "forged.test" in d.reply
    assert "DMARC" in d.reply and d.reason == "dmarc_reject"


def test_dmarc_reject_off_quarantines():
    d = judge_auth(_cfg(dmarc_reject=False), _auth(), "192.0.2.1")
    assert d.reply is None and [q["code"] for q in d.quarantine] == ["dmarc_reject"]


def test_dmarc_quarantine_quarantines():
    d = judge_auth(_cfg(), _auth(policy="quarantine"), "192.0.2.1")
    assert d.reply is None and [q["code"] for q in d.quarantine] == ["dmarc_quarantine"]


@pytest.mark.parametrize("policy", ["none", None])
def test_dmarc_none_policy_accepts(policy):
    d = judge_auth(_cfg(), _auth(policy=policy), "192.0.2.1")
    assert (d.reply, d.quarantine) == (None, [])


def test_spf_fail_without_dmarc():
    d = judge_auth(_cfg(), _auth(dmarc="none", policy=None), "192.0.2.1")
    assert d.reply is not None and d.reply.startswith("550 5.7.1 SPF fail") and "[192.0.2.1]" in d.reply
    assert judge_auth(_cfg(spf_fail_reject=False), _auth(dmarc="none", policy=None), "192.0.2.1").reply is None
    # with a DMARC record, DMARC decides: p=none accepts even though SPF failed
    assert judge_auth(_cfg(), _auth(dmarc="fail", policy="none"), "192.0.2.1").reply is None


@pytest.mark.parametrize("spf, dmarc", [("temperror", "temperror"), ("pass", "permerror"), ("softfail", "none")])
def test_errors_and_softfail_accept_and_are_noted(spf, dmarc):
    d = judge_auth(_cfg(), _auth(spf=spf, dmarc=dmarc, policy=None, reason="record without a valid p="), "192.0.2.1")
    assert (d.reply, d.quarantine) == (None, [])
    if "error" in spf + dmarc:
        assert d.notes


@pytest.mark.parametrize("action, reply, codes", [
    ("reject", "550 5.7.1", []), ("soft_reject", "451 4.7.1", []), ("quarantine", None, ["spam"]), ("accept", None, [])])
def test_spam_actions(action, reply, codes):
    d = judge_spam(SpamVerdict(action, score=12.0, required_score=15.0))
    assert (d.reply or "")[:9] == (reply or "") and [q["code"] for q in d.quarantine] == codes


def test_unscored_accepts_and_is_noted():
    d = judge_spam(SpamVerdict("accept", unscored="timeout"))
    assert d.reply is None and d.notes == ["spam engine: unscored (timeout)"]


def test_stored_results_rebuild_what_delivery_needs():
    auth = _auth()
    back = auth_from_json(auth_to_json(auth))
    assert (back.header_value, back.spf, back.spf_domain, back.dmarc, back.dmarc_policy, back.from_domain) == \
        (auth.header_value, "fail", "forged.test", "fail", "reject", "forged.test")
    assert back.dkim == auth.dkim
    assert auth_from_json({}).dkim == []                    # a damaged record still rebuilds
