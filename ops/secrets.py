"""`make deploy-secrets` (python -m ops.secrets): the secrets the deployments in deploy/ refuse to start without.

The Kubernetes kit and the Compose stack ship no credential of their own: `kubectl apply -k deploy/k8s` and
`docker compose up` fail until these files exist. Writes, into each folder given (deploy/k8s/secrets and
deploy/compose/secrets by default, both ignored by git), with owner-only permissions:

- tokens.json: the gateway's bearer tokens, one with the `read` scope (callers) and one with `write` (catalog and
  privacy operations), kept apart;
- ca.crt, tls.crt, tls.key: a private CA and the gateway's TLS certificate for its Service names (replace them
  with your own PKI's, or let cert-manager issue them: deploy/k8s/components/cert-manager);
- redis-password and redis-url (the gateway's REDIS_URL, with the password), qdrant-api-key;
- for Compose, gateway.env, redis.env and qdrant.env, the same values as environment files.

Both folders are owner-only. Kubernetes reads its files through kustomize (owner-only files); Compose bind-mounts
its files into containers that run as other users, so they are readable inside the owner-only folder. Existing
files are kept (so a rerun does not rotate live credentials) unless --rotate is given.
"""

import argparse
import datetime
import ipaddress
import json
import secrets
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

K8S_FOLDER = Path("deploy/k8s/secrets")
COMPOSE_FOLDER = Path("deploy/compose/secrets")
OWNER_ONLY, CONTAINER_READABLE = 0o600, 0o644
NAMESPACE = "recsys"
# Names callers reach the gateway by: its Services in the namespace, the Compose service, this machine.
GATEWAY_NAMES = ("recsys-gateway", f"recsys-gateway.{NAMESPACE}", f"recsys-gateway.{NAMESPACE}.svc",
                 f"recsys-gateway.{NAMESPACE}.svc.cluster.local", "recsys-gateway-headless",
                 f"recsys-gateway-headless.{NAMESPACE}.svc.cluster.local", "gateway", "localhost")
LOOPBACK = ("127.0.0.1", "::1")
CERTIFICATE_DAYS = 365
TOKEN_BYTES = 32


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def certificates(names: Sequence[str] = GATEWAY_NAMES, addresses: Sequence[str] = LOOPBACK
                 ) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, server certificate, server key) in PEM: a private CA and the gateway's certificate, valid
    for `names` and `addresses`."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key = _key(), _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "recsys private CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    alternative_names: list[x509.GeneralName] = [x509.DNSName(name) for name in names]
    alternative_names += [x509.IPAddress(ipaddress.ip_address(address)) for address in addresses]
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
              .issuer_name(ca_name).public_key(server_key.public_key())
              .serial_number(x509.random_serial_number()).not_valid_before(now)
              .not_valid_after(now + datetime.timedelta(days=CERTIFICATE_DAYS))
              .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    return _pem(ca), _pem(server), _pem_key(server_key)


def secret_files() -> dict[str, bytes]:
    """Every file of a fresh set of secrets, by name."""
    tokens = {secrets.token_urlsafe(TOKEN_BYTES): ["read"], secrets.token_urlsafe(TOKEN_BYTES): ["write"]}
    redis_password, qdrant_api_key = secrets.token_urlsafe(TOKEN_BYTES), secrets.token_urlsafe(TOKEN_BYTES)
    redis_url = f"redis://:{redis_password}@redis:6379/0"
    ca, certificate, key = certificates()
    return {
        "tokens.json": (json.dumps(tokens, indent=2) + "\n").encode(),
        "ca.crt": ca, "tls.crt": certificate, "tls.key": key,
        "redis-password": redis_password.encode(), "redis-url": redis_url.encode(),
        "qdrant-api-key": qdrant_api_key.encode(),
        "gateway.env": f"REDIS_URL={redis_url}\nQDRANT_API_KEY={qdrant_api_key}\n".encode(),
        "redis.env": f"REDIS_PASSWORD={redis_password}\nREDISCLI_AUTH={redis_password}\n".encode(),
        "qdrant.env": f"QDRANT__SERVICE__API_KEY={qdrant_api_key}\n".encode(),
    }


def write_secrets(folder: Path, rotate: bool = False, file_mode: int = OWNER_ONLY) -> bool:
    """Writes a fresh set into the owner-only `folder` unless one is there and `rotate` is off; True if written."""
    if (folder / "tokens.json").exists() and not rotate:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    for name, content in secret_files().items():
        path = folder / name
        path.touch(mode=OWNER_ONLY)
        path.chmod(OWNER_ONLY)
        path.write_bytes(content)
        path.chmod(file_mode)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ops.secrets", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k8s", type=Path, default=K8S_FOLDER, help=f"Kubernetes secrets (default {K8S_FOLDER})")
    parser.add_argument("--compose", type=Path, default=COMPOSE_FOLDER,
                        help=f"Compose secrets (default {COMPOSE_FOLDER})")
    parser.add_argument("--rotate", action="store_true", help="replace existing secrets with new ones")
    args = parser.parse_args(argv)
    for folder, mode in ((args.k8s, OWNER_ONLY), (args.compose, CONTAINER_READABLE)):
        written = write_secrets(folder, args.rotate, mode)
        print(f"{folder}: {'written' if written else 'kept (--rotate replaces them)'}")


if __name__ == "__main__":
    main()
