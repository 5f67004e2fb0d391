"""mxd.service.inbound.parse_ses: an SNS notification of an SES receipt read by a pure function."""
from __future__ import annotations

import base64
import json

import pytest

from mxd.errors import MxdError
from mxd.service.inbound import SesControl, SesMessage, parse_ses

RAW = b"From: a@remote.example\r\nTo: agent@example.test\r\nSubject: Hi\r\n\r\nHello\r\n"


def notification(**inner) -> dict:
    body = {"notificationType": "Received",
            "mail": {"source": "a@remote.example", "destination": ["agent@example.test"], "messageId": "ses-1"},
            "receipt": {"recipients": ["agent@example.test"], "action": {"type": "SNS", "encoding": "BASE64"}},
            "content": base64.b64encode(RAW).decode()}
    body.update(inner)
    return {"Type": "Notification", "Message": json.dumps(body)}


def test_a_valid_notification_is_its_message_and_envelope():
    note = parse_ses(notification())
    assert note == SesMessage(RAW, ["agent@example.test"], "a@remote.example", "ses-1")


def test_utf8_content_is_taken_as_text_when_the_action_says_so():
    note = parse_ses(notification(content=RAW.decode(), receipt={"action": {"encoding": "UTF8"}}))
    assert isinstance(note, SesMessage) and note.data == RAW and note.recipients == ["agent@example.test"]


def test_a_subscription_confirmation_is_not_followed():
    assert parse_ses({"Type": "SubscriptionConfirmation", "SubscribeURL": "https://sns.example/confirm"}) == \
        SesControl("SubscriptionConfirmation", "https://sns.example/confirm")
    assert parse_ses({"Type": "UnsubscribeConfirmation", "SubscribeURL": 5}).subscribe_url is None


@pytest.mark.parametrize("body, words", [
    ({"Type": "Other"}, "Type must be"),
    ({"Type": "Notification", "Message": "not json"}, "not the JSON"),
    ({"Type": "Notification", "Message": json.dumps({"content": "x"})}, '"mail" object'),
    (notification(notificationType="Bounce"), "not an inbound message"),
    (notification(content=""), "no content"),
    (notification(content="%%% not base64"), "not base64"),
    (notification(mail={"destination": []}, receipt={}), "must list the recipients"),
])
def test_a_malformed_notification_is_invalid(body, words):
    with pytest.raises(MxdError) as err:
        parse_ses(body)
    assert err.value.code == "invalid_notification" and words in err.value.message
