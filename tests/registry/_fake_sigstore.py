"""A self-contained Sigstore instance for tests: a Fulcio-like CA, a CT log and a Rekor-like log.

It issues a short-lived code-signing certificate for an email identity (with an embedded SCT),
signs a model-signing DSSE payload with it, logs the entry (a one-leaf Merkle tree with a signed
checkpoint and a signed entry timestamp) and writes the ``trusted_root.json`` that lets
sigstore-python verify the resulting bundle offline. Nothing here touches the network; the
formats are the public Sigstore ones (bundle v0.3, trusted root v0.1, RFC 6962 SCTs, Rekor dsse
0.0.1 entries, signed notes).
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

UTC = dt.timezone.utc
_SCT_OID = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _spki(key) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


@dataclass
class FakeSigstore:
    """One instance: CA, CT log and transparency log keys, all made fresh."""

    def __post_init__(self) -> None:
        self.now = dt.datetime.now(UTC).replace(microsecond=0)
        self.ca_key = ec.generate_private_key(ec.SECP384R1())
        self.ct_key = ec.generate_private_key(ec.SECP256R1())
        self.log_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pipewarden-test"),
                          x509.NameAttribute(NameOID.COMMON_NAME, "fake-fulcio")])
        ski = x509.SubjectKeyIdentifier.from_public_key(self.ca_key.public_key())
        self.ca_cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(self.now - dt.timedelta(days=1)).not_valid_after(self.now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(ski, critical=False)
            .sign(self.ca_key, hashes.SHA384())
        )

    # -- trust root ------------------------------------------------------------------------------
    def trusted_root(self) -> bytes:
        start = {"start": (self.now - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")}

        def log(key, url):
            return {
                "baseUrl": url,
                "hashAlgorithm": "SHA2_256",
                "publicKey": {"rawBytes": _b64(_spki(key)), "keyDetails": "PKIX_ECDSA_P256_SHA_256", "validFor": start},
                "logId": {"keyId": _b64(hashlib.sha256(_spki(key)).digest())},
            }

        doc = {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [log(self.log_key, "https://rekor.invalid")],
            "certificateAuthorities": [{
                "subject": {"organization": "pipewarden-test", "commonName": "fake-fulcio"},
                "uri": "https://fulcio.invalid",
                "certChain": {"certificates": [{"rawBytes": _b64(self.ca_cert.public_bytes(Encoding.DER))}]},
                "validFor": start,
            }],
            "ctlogs": [log(self.ct_key, "https://ctfe.invalid")],
            "timestampAuthorities": [],
        }
        return json.dumps(doc, indent=2).encode()

    # -- certificate ---------------------------------------------------------------------------
    def _leaf(self, leaf_key, identity: str, issuer: str, sct_list: bytes | None) -> x509.Certificate:
        b = (
            x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.ca_cert.subject)
            .public_key(leaf_key.public_key()).serial_number(self._serial)
            .not_valid_before(self.now - dt.timedelta(minutes=1)).not_valid_after(self.now + dt.timedelta(minutes=10))
            .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(identity)]), critical=True)
            .add_extension(x509.UnrecognizedExtension(_ISSUER_V1, issuer.encode()), critical=False)
            .add_extension(x509.UnrecognizedExtension(
                _ISSUER_V2, b"\x0c" + _der_len(len(issuer.encode())) + issuer.encode()), critical=False)
        )
        if sct_list is not None:
            octets = b"\x04" + _der_len(len(sct_list)) + sct_list
            b = b.add_extension(x509.UnrecognizedExtension(_SCT_OID, octets), critical=False)
        return b.sign(self.ca_key, hashes.SHA256())

    def certificate(self, leaf_key, identity: str, issuer: str) -> x509.Certificate:
        self._serial = x509.random_serial_number()
        # The SCT signs the precertificate (the certificate without its SCT extension).
        placeholder = self._leaf(leaf_key, identity, issuer, b"\x00\x00")
        tbs = placeholder.tbs_precertificate_bytes
        ts = int(self.now.timestamp() * 1000)
        issuer_key_hash = hashlib.sha256(_spki(self.ca_key)).digest()
        signed = struct.pack("!BBQH", 0, 0, ts, 1) + issuer_key_hash + len(tbs).to_bytes(3, "big") + tbs + b"\x00\x00"
        sig = self.ct_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        log_id = hashlib.sha256(_spki(self.ct_key)).digest()
        sct = b"\x00" + log_id + struct.pack("!Q", ts) + b"\x00\x00" + b"\x04\x03" + struct.pack("!H", len(sig)) + sig
        sct_list = struct.pack("!H", len(sct) + 2) + struct.pack("!H", len(sct)) + sct
        cert = self._leaf(leaf_key, identity, issuer, sct_list)
        assert cert.tbs_precertificate_bytes == tbs
        return cert

    # -- signing and logging ----------------------------------------------------------------------
    def sign_statement(self, payload: bytes, *, identity: str, issuer: str) -> bytes:
        """A Sigstore bundle (v0.3) over ``payload`` (an in-toto statement), as model-signing writes."""
        payload_type = "application/vnd.in-toto+json"
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        cert = self.certificate(leaf_key, identity, issuer)
        sig = leaf_key.sign(_pae(payload_type, payload), ec.ECDSA(hashes.SHA256()))
        envelope = {"payload": _b64(payload), "payloadType": payload_type, "signatures": [{"sig": _b64(sig)}]}
        body = json.dumps({
            "apiVersion": "0.0.1", "kind": "dsse",
            "spec": {
                "envelopeHash": {"algorithm": "sha256",
                                 "value": hashlib.sha256(json.dumps(envelope).encode()).hexdigest()},
                "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
                "signatures": [{"signature": _b64(sig),
                                "verifier": _b64(cert.public_bytes(Encoding.PEM))}],
            },
        }, separators=(",", ":")).encode()
        log_id = hashlib.sha256(_spki(self.log_key)).digest()
        integrated = int(self.now.timestamp())
        root = hashlib.sha256(b"\x00" + body).digest()  # a one-leaf tree: the root is the leaf hash
        note = f"rekor.invalid - 1\n1\n{_b64(root)}\n"
        note_sig = self.log_key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
        checkpoint = note + "\n" + f"\u2014 rekor.invalid {_b64(log_id[:4] + note_sig)}\n"
        set_payload = rfc8785.dumps({"body": _b64(body), "integratedTime": integrated,
                                     "logID": log_id.hex(), "logIndex": 0})
        entry = {
            "logIndex": "0",
            "logId": {"keyId": _b64(log_id)},
            "kindVersion": {"kind": "dsse", "version": "0.0.1"},
            "integratedTime": str(integrated),
            "inclusionPromise": {"signedEntryTimestamp": _b64(self.log_key.sign(set_payload, ec.ECDSA(hashes.SHA256())))},
            "inclusionProof": {"logIndex": "0", "rootHash": _b64(root), "treeSize": "1", "hashes": [],
                               "checkpoint": {"envelope": checkpoint}},
            "canonicalizedBody": _b64(body),
        }
        bundle = {
            "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
            "verificationMaterial": {"certificate": {"rawBytes": _b64(cert.public_bytes(Encoding.DER))},
                                     "tlogEntries": [entry]},
            "dsseEnvelope": envelope,
        }
        return json.dumps(bundle).encode()


def statement_for(directory: Path) -> bytes:
    """The in-toto statement model-signing signs for ``directory`` (its own hashing, default options)."""
    import model_signing
    from google.protobuf import json_format
    from model_signing._signing import signing

    manifest = model_signing.hashing.Config().hash(directory)
    return json_format.MessageToJson(signing.Payload(manifest).statement.pb).encode()
