"""Owner sign-up throttling: each new code resets the attempt count, so codes and sign-ups are slowed."""
from __future__ import annotations

import pytest

from mxd.db import Database
from mxd.errors import MxdError
from mxd.store import orgs


def test_a_new_code_for_the_same_owner_waits_a_minute(db: Database) -> None:
    t = 1_800_000_000.0
    org, first, created = db.write_sync(orgs.signup, "Owner@Example.com", "Acme", "acme", "192.0.2.1", t)
    assert created and len(first) == 6 and first.isdigit()
    with pytest.raises(MxdError) as exc:
        db.write_sync(orgs.signup, "owner@example.com", "Acme", "acme", "192.0.2.9", t + 30)
    assert exc.value.code == "rate_limited" and 0 < exc.value.retry_after <= 31
    again, _, created = db.write_sync(orgs.signup, "owner@example.com", "Acme", "acme", "192.0.2.9",
                                      t + orgs.RESEND_SECONDS + 1)
    assert again.id == org.id and not created
    # the operator (no client address) is not throttled
    db.write_sync(orgs.signup, "owner@example.com", "Acme", "acme", "", t + orgs.RESEND_SECONDS + 2)


def test_one_client_address_may_sign_up_only_so_often(db: Database) -> None:
    t = 1_800_000_000.0
    for i in range(orgs.SIGNUPS_PER_IP_PER_HOUR):
        db.write_sync(orgs.signup, f"o{i}@example.com", f"Org {i}", f"org-{i}", "198.51.100.7", t + i)
    with pytest.raises(MxdError) as exc:
        db.write_sync(orgs.signup, "late@example.com", "Late", "late", "198.51.100.7", t + 20)
    assert exc.value.code == "rate_limited" and exc.value.status == 429
    db.write_sync(orgs.signup, "other@example.com", "Other", "other", "198.51.100.8", t + 21)   # another client
    db.write_sync(orgs.signup, "late@example.com", "Late", "late", "198.51.100.7", t + 3601)     # an hour later
