"""Drain URL parsing (DESIGN section 3): accepted forms, defaults, credentials, refusals."""

from __future__ import annotations

import pytest

from drains import DrainURL, InvalidDrainURL, parse_drain_url


@pytest.mark.parametrize(
    ("url", "kind", "host", "port", "target"),
    [
        ("https://example.com/logs", "http", "example.com", 443, "https://example.com/logs"),
        ("https://example.com", "http", "example.com", 443, "https://example.com/"),
        ("http://h:8080/a/b?x=1&y=2", "http", "h", 8080, "http://h:8080/a/b?x=1&y=2"),
        ("HTTPS://Example.COM:8443/p", "http", "example.com", 8443, "https://example.com:8443/p"),
        (
            "syslog://logs.example.com",
            "syslog",
            "logs.example.com",
            601,
            "syslog://logs.example.com:601",
        ),
        ("syslog://10.0.0.1:1514", "syslog", "10.0.0.1", 1514, "syslog://10.0.0.1:1514"),
        ("syslog+tls://h", "syslog+tls", "h", 6514, "syslog+tls://h:6514"),
        ("syslog+tls://h:7000/", "syslog+tls", "h", 7000, "syslog+tls://h:7000"),
        ("syslog+udp://h", "syslog+udp", "h", 514, "syslog+udp://h:514"),
        ("syslog://[::1]:99", "syslog", "::1", 99, "syslog://[::1]:99"),
    ],
)
def test_accepted_forms_and_default_ports(
    url: str, kind: str, host: str, port: int, target: str
) -> None:
    parsed = parse_drain_url(url)
    assert (parsed.kind, parsed.host, parsed.port, parsed.target) == (kind, host, port, target)
    assert not parsed.insecure


def test_userinfo_is_percent_decoded_and_password_may_contain_colons() -> None:
    parsed = parse_drain_url("https://us%40er:pa:ss%2Fw@rd@example.com/x")
    assert parsed.username == "us@er"
    assert parsed.password == "pa:ss/w@rd"
    assert parsed.target == "https://example.com/x"


def test_user_without_password_gets_empty_password() -> None:
    parsed = parse_drain_url("https://token@example.com/x")
    assert (parsed.username, parsed.password) == ("token", "")


@pytest.mark.parametrize("url", ["syslog+tls://h#insecure", "https://h/p#insecure"])
def test_insecure_fragment_on_tls_kinds(url: str) -> None:
    assert parse_drain_url(url).insecure


def test_redacted_form_has_no_credentials() -> None:
    parsed = parse_drain_url("https://user:s3cret@example.com/p?key=v4lue&x=1#insecure")
    shown = parsed.redacted()
    assert "s3cret" not in shown
    assert "user" not in shown
    assert "v4lue" not in shown
    assert shown == "https://example.com/p?key=…&x=…#insecure"
    assert "s3cret" not in repr(parsed)


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("ftp://h/x", "scheme 'ftp' is not supported; use https://, http://, syslog://"),
        ("", "empty"),
        ("example.com/logs", "no scheme"),
        ("https:///path", "no host"),
        ("syslog://h:99999", "port '99999' is not a number between 1 and 65535"),
        ("syslog://h:abc", "port 'abc'"),
        ("syslog://h:0", "port 0"),
        ("syslog://u:p@h", "take no user or password"),
        ("syslog://h/path", "take no path or query"),
        ("syslog+udp://h?x=1", "take no path or query"),
        ("syslog://h#insecure", "only applies to https:// and syslog+tls://"),
        ("https://h/#frag", "fragment #frag is not understood"),
        ("https://h/a b", "whitespace"),
        ("https://h/" + "a" * 3000, "longer than 2048"),
    ],
)
def test_refusals_say_what_is_wrong(url: str, fragment: str) -> None:
    with pytest.raises(InvalidDrainURL, match=None) as info:
        parse_drain_url(url)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_drain_url_is_a_frozen_record() -> None:
    parsed = parse_drain_url("syslog://h")
    assert isinstance(parsed, DrainURL)
    with pytest.raises(AttributeError):
        parsed.host = "other"  # type: ignore[misc]


def test_non_ascii_path_and_host_are_encoded_for_the_wire() -> None:
    parsed = parse_drain_url("https://b\u00fccher.example/\u00e9t\u00e9?q=\u00e0&x=%20")
    assert parsed.host == "xn--bcher-kva.example"
    assert parsed.target == "https://xn--bcher-kva.example/%C3%A9t%C3%A9?q=%C3%A0&x=%20"
    assert parsed.target.isascii()


@pytest.mark.parametrize(
    ("url", "shown", "shown_with_username"),
    [
        ("syslog+tls://logs.example:6514", "syslog+tls://logs.example:6514", None),
        (
            "https://user:secret@logs.example/in?x=1",
            "https://logs.example/in?x=…",
            "https://user:***@logs.example/in?x=…",
        ),
        ("https://u:p@[::1]:8443/x", "https://[::1]:8443/x", "https://u:***@[::1]:8443/x"),
        ("https://us%40er:p@h/", "https://h/", "https://us%40er:***@h/"),
        # A lone user name is how many services carry their API token.
        ("https://tokenonly@logs.example/", "https://logs.example/", "https://***@logs.example/"),
        ("https://h/in?key=s3cret", "https://h/in?key=…", None),
        ("https://h/in?s3cret", "https://h/in?…", None),
        ("https://h/in?a=1&s3cret&b=", "https://h/in?a=…&…&b=…", None),
        ("http://h/in?key=s3cret#", "http://h/in?key=…", None),
    ],
)
def test_redacted_masks_userinfo_and_every_query_value(
    url: str, shown: str, shown_with_username: str | None
) -> None:
    parsed = parse_drain_url(url)
    assert parsed.redacted() == shown
    assert parsed.redacted(keep_username=True) == (shown_with_username or shown)
