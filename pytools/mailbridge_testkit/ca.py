"""A test CA and a leaf certificate for 127.0.0.1 / localhost, made with openssl."""

import os
import ssl
from pathlib import Path

from .wait import ok


class TestCA:
    """A CA and a separate leaf (SAN IP:127.0.0.1, DNS:localhost, EKU serverAuth)."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, directory, name="mailbridge interop CA"):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = self.dir / "ca.pem"
        self.ca_key = self.dir / "ca.key"
        self.cert = self.dir / "leaf.pem"
        self.key = self.dir / "leaf.key"
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        ok(["openssl", "req", "-x509", *ec, "-keyout", self.ca_key, "-out", self.ca, "-days", "2",
            "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        csr = self.dir / "leaf.csr"
        ok(["openssl", "req", "-new", *ec, "-keyout", self.key, "-out", csr, "-subj", "/CN=localhost"])
        ext = self.dir / "leaf.ext"
        ext.write_text(
            "basicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\n"
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        )
        ok(["openssl", "x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key,
            "-CAcreateserial", "-out", self.cert, "-days", "2", "-extfile", ext])
        for p in (self.ca, self.cert, self.key):
            os.chmod(p, 0o644)

    def ssl_context(self):
        return ssl.create_default_context(cafile=str(self.ca))
