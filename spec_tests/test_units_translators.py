"""Socket-free unit tests of the translators (evio/_translate.py, evio/_translate.py).

A translator is sans-I/O: bytes in, bytes out, in both directions. Here two
of them talk to each other through plain variables -- a zlib pair, and a TLS
server and client over memory BIOs with trustme certificates -- with no
loop and no socket. The socket tests of the same rules are in
test_translate.py and test_tls.py. The classes are public, but ``receive``
and ``send`` are driven here as the loop drives them, so ``impl_detail``.
"""

from __future__ import annotations

import ssl
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from implementation import evio

if TYPE_CHECKING:
    from evio import TLSTranslator

pytestmark = [pytest.mark.impl_detail, pytest.mark.timeout(20)]

trustme = pytest.importorskip("trustme")


@pytest.mark.rule("TR-4")
def test_passthrough_passes_bytes_through_unchanged() -> None:
    from evio import Passthrough

    p = Passthrough()
    assert p.start() == b"" and p.handshake_done
    assert p.receive(b"wire") == (b"wire", b"")
    assert p.send(b"plain") == b"plain"
    assert p.close() == b"" and p.eof() is None and not p.ended


@pytest.mark.rule("ZLIB-1")
def test_each_zlib_output_can_be_decompressed_at_once_and_close_ends_the_stream() -> None:
    a, b = evio.ZlibTranslator(), evio.ZlibTranslator()
    for message in [b"hello", b"", b"x" * 100_000, bytes(range(256)) * 50]:
        wire = a.send(message)
        plain = bytearray()
        for i in range(len(wire)):  # however the bytes are split across reads
            got, reply = b.receive(wire[i:i + 1])
            plain += got
            assert reply == b""
        assert plain == message, "a sync-flushed output decompresses without more input"
    assert not b.ended
    got, _ = b.receive(a.close())
    assert got == b"" and b.ended, "the end of the compressed stream ends the connection (TR-6)"


@pytest.mark.rule("ZLIB-2")
def test_corrupt_or_expanding_zlib_input_is_an_error() -> None:
    with pytest.raises(zlib.error):
        evio.ZlibTranslator().receive(b"this is not zlib at all")
    small = evio.ZlibTranslator(max_plain=1000)
    bomb = evio.ZlibTranslator().send(bytes(1001))
    with pytest.raises(ValueError, match="1000"):
        small.receive(bomb)
    ok = evio.ZlibTranslator(max_plain=1000)
    assert ok.receive(evio.ZlibTranslator().send(bytes(1000)))[0] == bytes(1000)


# ---------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def contexts(tmp_path_factory: pytest.TempPathFactory) -> Contexts:
    from evio import client_context, server_context

    tmp: Path = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost")
    chain, cafile = tmp / "chain.pem", tmp / "ca.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(chain))
    ca.cert_pem.write_to_path(str(cafile))
    return server_context(str(chain)), client_context(str(cafile))


Contexts = tuple[ssl.SSLContext, ssl.SSLContext]


def _pair(contexts: Contexts) -> tuple[TLSTranslator, TLSTranslator]:
    from evio import TLSTranslator

    server_ctx, client_ctx = contexts
    return (TLSTranslator(server_ctx, server_side=True),
            TLSTranslator(client_ctx, server_side=False, server_hostname="localhost"))


def _connected(contexts: Contexts) -> tuple[TLSTranslator, TLSTranslator]:
    """A server and a client translator that have completed their handshake."""
    server, client = _pair(contexts)
    _pump(server, client, client.start())
    return server, client


def _chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def _pump(server: TLSTranslator, client: TLSTranslator, first: bytes,
          split: int = 1 << 20) -> tuple[bytes, bytes]:
    """Carry wire bytes both ways, in reads of ``split`` bytes, until neither
    side has more; ``first`` goes client -> server. Returns the plaintext
    each side received."""
    got = {"server": bytearray(), "client": bytearray()}
    to_server, to_client = first, b""
    for _ in range(1000):
        if not to_server and not to_client:
            break
        wire, to_server = to_server, b""
        for chunk in _chunks(wire, split):
            plain, reply = server.receive(chunk)
            got["server"] += plain
            to_client += reply
        wire, to_client = to_client, b""
        for chunk in _chunks(wire, split):
            plain, reply = client.receive(chunk)
            got["client"] += plain
            to_server += reply
    else:
        raise AssertionError("the two sides never stopped talking")
    return bytes(got["server"]), bytes(got["client"])


@pytest.mark.rule("TLS-1", "TLS-2")
@pytest.mark.parametrize("split", [1, 7, 1 << 20])
def test_tls_carries_data_both_ways_however_the_records_are_split(
    contexts: Contexts, split: int
) -> None:
    server, client = _pair(contexts)
    held = server.send(b"greeting before the handshake")
    assert held == b"", "output before the handshake is held (TLS-2)"
    assert not server.handshake_done
    _, plain = _pump(server, client, client.start(), split)
    assert server.handshake_done and client.handshake_done
    assert plain == b"greeting before the handshake", "sent as the handshake completed"
    big = bytes(range(256)) * 1000
    to_server = client.send(big)
    got_server, _ = _pump(server, client, to_server, split)
    assert got_server == big
    to_client = server.send(b"reply")
    got_client, _ = _pump(client, server, to_client, split)
    assert got_client == b"reply"


@pytest.mark.rule("TLS-7")
def test_one_receive_decrypts_every_whole_record_it_is_given(contexts: Contexts) -> None:
    server, client = _connected(contexts)
    records = b"".join(client.send(b"r%d;" % i) for i in range(50))
    plain, _ = server.receive(records)
    assert plain == b"".join(b"r%d;" % i for i in range(50))


@pytest.mark.rule("TLS-5")
def test_close_notify_ends_the_peer_cleanly(contexts: Contexts) -> None:
    server, client = _connected(contexts)
    goodbye = client.close()
    assert goodbye, "close() writes a close_notify"
    plain, _ = server.receive(goodbye)
    assert plain == b"" and server.ended
    assert server.eof() is None, "after the handshake an end of stream is orderly"


@pytest.mark.rule("TLS-4")
def test_plain_text_on_a_tls_port_is_an_ssl_error(contexts: Contexts) -> None:
    server, _client = _pair(contexts)
    with pytest.raises(ssl.SSLError):
        server.receive(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert not server.handshake_done


@pytest.mark.rule("TLS-4")
def test_an_end_of_stream_during_the_handshake_is_an_ssl_eof_error(contexts: Contexts) -> None:
    server, client = _pair(contexts)
    hello = client.start()
    server.receive(hello[: len(hello) // 2])
    assert isinstance(server.eof(), ssl.SSLEOFError)


@pytest.mark.rule("TLS-4")
def test_an_untrusted_certificate_fails_the_client_handshake(contexts: Contexts) -> None:
    from evio import TLSTranslator, client_context

    server_ctx, _ = contexts
    server = TLSTranslator(server_ctx, server_side=True)
    stranger = TLSTranslator(client_context(), server_side=False, server_hostname="localhost")
    with pytest.raises(ssl.SSLCertVerificationError):
        _pump(server, stranger, stranger.start())
    assert not stranger.handshake_done
    assert stranger.alert, "the alert that tells the server why is kept for the loop to send"
