"""Gateway configuration: read once from environment variables, then passed down explicitly."""

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ranker import Weights

from .images import ImageLimits

MiB = 1024 * 1024


@dataclass(frozen=True)
class Settings:
    """Every setting with its default; `from_env` documents the variable that overrides each."""

    grpc_address: str = "[::]:50051"
    metrics_port: int = 9464
    triton_url: str | None = None
    qdrant_url: str | None = None
    redis_url: str | None = None
    data_dir: Path = Path("data")
    model_name: str = "product_embedder"
    model_version: str = ""
    collection: str = "products"
    max_message_bytes: int = 16 * MiB
    image_limits: ImageLimits = field(default_factory=ImageLimits)
    default_limit: int = 10
    max_limit: int = 100
    oversample: int = 5
    min_candidates: int = 50
    history_max_views: int = 50
    history_ttl_s: int = 30 * 24 * 3600
    weights: Weights = field(default_factory=Weights)
    request_timeout_s: float = 5.0
    embed_timeout_s: float = 3.0
    search_timeout_s: float = 1.0
    history_timeout_s: float = 0.25
    item_cache_size: int = 10_000
    item_cache_ttl_s: float = 30.0
    decode_workers: int = 2
    ingest_batch_size: int = 16
    max_concurrent_requests: int = 64
    max_concurrent_images: int = 8
    auth_tokens_file: Path | None = None
    auth_tokens: str | None = field(default=None, repr=False)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None

    def __post_init__(self) -> None:
        if self.auth_tokens_file and self.auth_tokens:
            raise ValueError("set AUTH_TOKENS_FILE or AUTH_TOKENS, not both")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both TLS_CERT_FILE and TLS_KEY_FILE")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("TLS_CLIENT_CA_FILE (mutual TLS) needs TLS_CERT_FILE and TLS_KEY_FILE")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Settings":
        """Builds settings from the environment; unset or empty variables keep their defaults."""

        def get(name: str) -> str | None:
            return env.get(name) or None

        def path(name: str) -> Path | None:
            value = get(name)
            return Path(value) if value else None

        defaults = cls()
        weights = defaults.weights
        return cls(
            grpc_address=get("GRPC_ADDRESS") or defaults.grpc_address,
            metrics_port=int(get("METRICS_PORT") or defaults.metrics_port),
            triton_url=get("TRITON_URL"),
            qdrant_url=get("QDRANT_URL"),
            redis_url=get("REDIS_URL"),
            data_dir=Path(get("DATA_DIR") or defaults.data_dir),
            model_name=get("MODEL_NAME") or defaults.model_name,
            model_version=get("MODEL_VERSION") or defaults.model_version,
            collection=get("QDRANT_COLLECTION") or defaults.collection,
            history_max_views=int(get("HISTORY_MAX_VIEWS") or defaults.history_max_views),
            history_ttl_s=int(get("HISTORY_TTL_SECONDS") or defaults.history_ttl_s),
            weights=Weights(
                visual=float(get("RANK_WEIGHT_VISUAL") or weights.visual),
                history=float(get("RANK_WEIGHT_HISTORY") or weights.history),
                category=float(get("RANK_WEIGHT_CATEGORY") or weights.category),
                popularity=float(get("RANK_WEIGHT_POPULARITY") or weights.popularity),
                half_life_views=float(get("RANK_HALF_LIFE_VIEWS") or weights.half_life_views),
                exclude_viewed=(get("RANK_EXCLUDE_VIEWED") or str(weights.exclude_viewed)).lower() in ("1", "true"),
            ),
            request_timeout_s=float(get("REQUEST_TIMEOUT_SECONDS") or defaults.request_timeout_s),
            embed_timeout_s=float(get("EMBED_TIMEOUT_SECONDS") or defaults.embed_timeout_s),
            search_timeout_s=float(get("SEARCH_TIMEOUT_SECONDS") or defaults.search_timeout_s),
            history_timeout_s=float(get("HISTORY_TIMEOUT_SECONDS") or defaults.history_timeout_s),
            item_cache_size=int(get("ITEM_CACHE_SIZE") or defaults.item_cache_size),
            item_cache_ttl_s=float(get("ITEM_CACHE_TTL_SECONDS") or defaults.item_cache_ttl_s),
            decode_workers=int(get("DECODE_WORKERS") or defaults.decode_workers),
            max_concurrent_requests=int(get("MAX_CONCURRENT_REQUESTS") or defaults.max_concurrent_requests),
            max_concurrent_images=int(get("MAX_CONCURRENT_IMAGES") or defaults.max_concurrent_images),
            auth_tokens_file=path("AUTH_TOKENS_FILE"),
            auth_tokens=get("AUTH_TOKENS"),
            tls_cert_file=path("TLS_CERT_FILE"),
            tls_key_file=path("TLS_KEY_FILE"),
            tls_client_ca_file=path("TLS_CLIENT_CA_FILE"),
        )
