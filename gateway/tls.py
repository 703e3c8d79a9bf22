"""TLS for the gRPC port: a server certificate, and with a client CA, mutual TLS (clients must present a
certificate that CA signed)."""

import grpc

from .config import Settings


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """The port's TLS credentials, or None for plaintext when no certificate is configured."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    client_ca = settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
    return grpc.ssl_server_credentials([(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
                                       root_certificates=client_ca, require_client_auth=client_ca is not None)
