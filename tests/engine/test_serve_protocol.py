"""The server's pure parts: stop sequences in streamed text, request checking, the bind rule."""

from __future__ import annotations

import socket

import pytest

from engine.errors import FtuiError
from engine.serve.options import ServeOptions, check_options, is_loopback
from engine.serve.protocol import ApiError, ChatCompletionRequest, StopScanner, parse_body


def scan(pieces: list[str], stops: list[str], trim: bool = False) -> tuple[list[str], bool]:
    scanner = StopScanner(stops, trim_start=trim)
    out = [scanner.feed(p) for p in pieces]
    out.append(scanner.flush())
    return out, scanner.hit


def test_a_stop_sequence_split_across_pieces_is_never_sent() -> None:
    out, hit = scan(["The app", "le is re", "d.## Us", "er: more"], ["## User"])
    assert "".join(out) == "The apple is red."
    assert hit and "#" not in "".join(out)
    # what could start a stop sequence is held back, then sent once it cannot
    out, hit = scan(["a #", "# not a stop"], ["## User"])
    assert out[0] == "a " and "".join(out) == "a ## not a stop" and not hit


def test_the_earliest_of_several_stops_wins_and_leading_space_is_trimmed() -> None:
    out, hit = scan(["\n  one, two. three"], [".", ","], trim=True)
    assert "".join(out) == "one" and hit
    out, hit = scan(["\n", " ", "hi there"], [], trim=True)
    assert "".join(out) == "hi there" and not hit


def test_request_errors_name_the_field() -> None:
    with pytest.raises(ApiError) as bad_json:
        parse_body(b'{"model": "final", "messages": [', ChatCompletionRequest)
    assert bad_json.value.status == 400 and bad_json.value.code == "invalid_json"
    with pytest.raises(ApiError) as missing:
        parse_body(b'{"model": "final"}', ChatCompletionRequest)
    assert missing.value.status == 422 and missing.value.param == "messages"
    with pytest.raises(ApiError) as hot:
        parse_body(b'{"model": "m", "messages": [{"role": "user", "content": "x"}], '
                   b'"temperature": 3}', ChatCompletionRequest)  # fmt: skip
    assert hot.value.status == 422 and hot.value.param == "temperature"
    with pytest.raises(ApiError) as several:
        parse_body(b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "n": 2}',
                   ChatCompletionRequest)  # fmt: skip
    assert several.value.status == 400 and several.value.param == "n"
    body = several.value.body()["error"]
    assert set(body) == {"message", "type", "param", "code"}


def test_content_parts_and_developer_messages() -> None:
    request = parse_body(
        b'{"model": "m", "messages": [{"role": "developer", "content": "be brief"}, '
        b'{"role": "user", "content": [{"type": "text", "text": "hi "}, '
        b'{"type": "text", "text": "there"}]}]}',
        ChatCompletionRequest,
    )
    assert request.chat_messages() == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi there"},
    ]


def test_only_loopback_binds_without_a_key() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3")
    with pytest.raises(FtuiError, match="without a key") as refused:
        check_options(ServeOptions(host="0.0.0.0", port=8000))
    assert "ssh -L" in str(refused.value)
    with pytest.raises(FtuiError, match="at least 8"):
        check_options(ServeOptions(host="0.0.0.0", api_key="short"))


def test_a_port_in_use_is_refused_before_anything_starts() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(FtuiError, match="in use"):
            check_options(ServeOptions(port=port))
