from deskstream.ids import event_id, find_ticket_token, ticket_id_for


def test_event_id_is_deterministic_and_separates_sources() -> None:
    a = event_id("email", "desk@example.com", "<abc@x>")
    assert a == event_id("email", "desk@example.com", "<abc@x>")
    assert a != event_id("email", "other@example.com", "<abc@x>")
    assert a != event_id("x-dm", "desk@example.com", "<abc@x>")
    # Parts are separated, so shifting text between them gives another id.
    assert event_id("s", "ab", "c") != event_id("s", "a", "bc")


def test_ticket_id_is_short_readable_and_stable() -> None:
    tid = ticket_id_for("email:0123")
    assert tid == ticket_id_for("email:0123")
    assert tid.startswith("DS-")
    assert len(tid) == 11
    assert set(tid[3:]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    assert ticket_id_for("email:0124") != tid


def test_ticket_token_is_found_in_a_reply_subject() -> None:
    tid = ticket_id_for("portal:r1")
    assert find_ticket_token(f"RE: AW: [#{tid}] VPN keeps dropping") == tid
    assert find_ticket_token(f"re: [#{tid.lower()}] vpn") == tid
    assert find_ticket_token("RE: VPN keeps dropping") is None
    assert find_ticket_token("DS-12345678 is not base32") is None
