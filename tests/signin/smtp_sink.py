"""An SMTP sink for tests/signin.rs: takes every message on a loopback port of
its own choosing (printed on stdout), and writes each one's decoded text body
to DIR/NNNN.txt (atomically, via a rename), so the test reads the link."""
import asyncio
import email
import email.policy
import os
import socket
import sys

from aiosmtpd.smtp import SMTP


class Sink:
    def __init__(self, directory):
        self.directory = directory
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        message = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",)).get_content()
        path = os.path.join(self.directory, f"{self.count:04d}.txt")
        with open(path + ".tmp", "w") as f:
            f.write(f"To: {message['To']}\nSubject: {message['Subject']}\n\n{body}")
        os.rename(path + ".tmp", path)
        return "250 OK"


async def main():
    sink = Sink(sys.argv[1])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    loop = asyncio.get_running_loop()
    await loop.create_server(lambda: SMTP(sink, hostname="sink"), sock=sock)
    print(sock.getsockname()[1], flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
