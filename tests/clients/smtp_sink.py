"""A real SMTP server for the notification tests (aiosmtpd): STARTTLS
required with the given certificate, every message written to OUT as
<n>.eml. Prints "ready" once it listens; runs until killed.

    python3 smtp_sink.py PORT CERT KEY OUT
"""
import pathlib
import ssl
import sys
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP


class Keep:
    def __init__(self, out):
        self.out = pathlib.Path(out)
        self.n = 0

    async def handle_DATA(self, server, session, envelope):
        self.n += 1
        tls = "tls" if session.ssl else "plain"
        (self.out / f"{self.n}.eml").write_bytes(
            f"X-Sink-Transport: {tls}\r\nX-Sink-Rcpt: {','.join(envelope.rcpt_tos)}\r\n".encode()
            + envelope.content
        )
        return "250 OK"


class Sink(Controller):
    def __init__(self, handler, tls, **kw):
        self.tls = tls
        super().__init__(handler, **kw)

    def factory(self):
        return SMTP(self.handler, require_starttls=True, tls_context=self.tls)


port, cert, key, out = sys.argv[1:5]
tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
tls.load_cert_chain(cert, key)
sink = Sink(Keep(out), tls, hostname="127.0.0.1", port=int(port))
sink.start()
print("ready", flush=True)
while True:
    time.sleep(3600)
