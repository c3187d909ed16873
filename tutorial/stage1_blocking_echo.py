"""Stage 1: a blocking echo server, one client at a time.

Every call here waits: ``accept`` until a client connects, ``recv`` until
bytes arrive, ``sendall`` until the kernel has taken the whole echo. That
makes the program short and obviously right for one client, and useless for
two: while it waits on the first client, a second one can connect (the
kernel completes the handshake and parks it in the listen backlog) but
nothing reads its bytes until the first client leaves.

    python tutorial/stage1_blocking_echo.py --port 5000
"""

from __future__ import annotations

import argparse
import contextlib
import socket


def serve(listener: socket.socket) -> None:
    """Echo for one client after another, for ever."""
    while True:
        conn, _ = listener.accept()  # waits for the next client
        # A client that resets the connection ends only its own session.
        with conn, contextlib.suppress(ConnectionError):
            while data := conn.recv(65536):  # waits for bytes; b"" is the end
                conn.sendall(data)  # waits until the kernel took all of it


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Stage 1: a blocking echo server.")
    parser.add_argument("--port", type=int, default=5000,
                        help="TCP port on 127.0.0.1 (default 5000; 0 picks a free one)")
    args = parser.parse_args(argv)
    with socket.create_server(("127.0.0.1", args.port)) as listener:
        host, port = listener.getsockname()
        print(f"stage 1 echo server listening on {host}:{port}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            serve(listener)


if __name__ == "__main__":
    main()
