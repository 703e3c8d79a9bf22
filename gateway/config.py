"""Gateway configuration: environment variables read once at start-up by pydantic-settings, then passed down.

Each field's variable is its name in capitals unless its ``validation_alias`` names another; an unset or empty
variable keeps the default. `Settings.from_env` turns a bad value into a `SettingsError` that names the variable
and what it expects. docs/configuration.md lists every variable.
"""

import logging
import re
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Annotated, Literal

import pydantic_settings
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ranker import Weights

from .experiments import BUCKETS, Arm, Experiments, label_of
from .images import ImageLimits

MiB = 1024 * 1024
_DEFAULT_WEIGHTS = Weights()
_DEFAULT_IMAGE_LIMITS = ImageLimits()

PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
PositiveSeconds = PositiveFloat
Weight = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Port = Annotated[int, Field(ge=0, le=65535)]
ArmName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class ArmSettings(BaseModel):
    """One experiment arm of RANK_EXPERIMENTS: the percentage of shoppers it serves, and the ranker settings it
    changes (named as the fields of ranker.Weights; unset ones keep the RANK_* values)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    share: int = Field(ge=1, le=BUCKETS)
    visual: Weight | None = None
    history: Weight | None = None
    category: Weight | None = None
    popularity: Weight | None = None
    dismissed: Weight | None = None
    half_life_views: PositiveFloat | None = None
    history_temperature: PositiveFloat | None = None
    near_duplicate: float | None = Field(None, ge=-1, lt=1)


class SettingsError(ValueError):
    """The environment holds a value the gateway cannot use; the message names each variable and the problem."""


class Settings(BaseSettings):
    """Every setting of the gateway with its default."""

    model_config = SettingsConfigDict(frozen=True, env_ignore_empty=True, populate_by_name=True, extra="ignore")

    grpc_address: str = "[::]:50051"
    gateway_workers: int = Field(1, ge=1)
    health_port: Port | None = None
    metrics_port: Port = 9464
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    triton_url: str | None = None
    qdrant_url: str | None = None
    qdrant_api_key: str | None = Field(None, repr=False)
    redis_url: str | None = Field(None, repr=False)  # may carry the password
    data_dir: Path = Path("data")
    model_name: str = "product_embedder"
    model_version: str = ""
    collection: str = Field("products", validation_alias="QDRANT_COLLECTION")
    max_message_bytes: int = Field(16 * MiB, ge=MiB)
    image_max_bytes: int = Field(_DEFAULT_IMAGE_LIMITS.max_bytes, gt=0)
    image_max_pixels: int = Field(_DEFAULT_IMAGE_LIMITS.max_pixels, gt=0)
    image_max_side: int = Field(_DEFAULT_IMAGE_LIMITS.max_side, gt=0)
    default_limit: int = Field(10, ge=1)
    max_limit: int = Field(100, ge=1)
    oversample: int = Field(5, ge=1)
    min_candidates: int = Field(50, ge=1)
    history_max_views: int = Field(50, ge=1)
    history_ttl_s: int = Field(30 * 24 * 3600, ge=1, validation_alias="HISTORY_TTL_SECONDS")
    history_max_dismissals: int = Field(50, ge=1)
    popularity_purchase_weight: float = Field(5.0, ge=1, allow_inf_nan=False)
    rank_weight_visual: Weight = _DEFAULT_WEIGHTS.visual
    rank_weight_history: Weight = _DEFAULT_WEIGHTS.history
    rank_weight_category: Weight = _DEFAULT_WEIGHTS.category
    rank_weight_popularity: Weight = _DEFAULT_WEIGHTS.popularity
    rank_weight_dismissed: Weight = _DEFAULT_WEIGHTS.dismissed
    rank_half_life_views: PositiveFloat = _DEFAULT_WEIGHTS.half_life_views
    rank_history_temperature: PositiveFloat = _DEFAULT_WEIGHTS.history_temperature
    rank_near_duplicate: float = Field(_DEFAULT_WEIGHTS.near_duplicate, ge=-1, lt=1)
    rank_mmr_lambda: float = Field(1.0, gt=0, le=1)
    rank_search_views: int = Field(3, ge=0)
    rank_view_pool: int = Field(20, ge=1)
    rank_exclude_viewed: bool = _DEFAULT_WEIGHTS.exclude_viewed
    rank_experiments: dict[ArmName, ArmSettings] = {}
    rank_experiment_salt: str = ""
    request_timeout_s: PositiveSeconds = Field(5.0, validation_alias="REQUEST_TIMEOUT_SECONDS")
    embed_timeout_s: PositiveSeconds = Field(3.0, validation_alias="EMBED_TIMEOUT_SECONDS")
    search_timeout_s: PositiveSeconds = Field(1.0, validation_alias="SEARCH_TIMEOUT_SECONDS")
    search_batch_window_ms: float = Field(2.0, ge=0, le=50, allow_inf_nan=False)
    history_timeout_s: PositiveSeconds = Field(0.25, validation_alias="HISTORY_TIMEOUT_SECONDS")
    item_cache_size: int = Field(10_000, ge=0)
    item_cache_ttl_s: float = Field(30.0, ge=0, allow_inf_nan=False, validation_alias="ITEM_CACHE_TTL_SECONDS")
    decode_workers: int = Field(2, ge=1)
    image_preprocessing: Literal["gateway", "triton"] = "gateway"
    ingest_batch_size: int = Field(16, ge=1)
    max_concurrent_requests: int = Field(64, ge=1)
    max_concurrent_images: int = Field(8, ge=1)
    auth_tokens_file: Path | None = None
    auth_tokens: str | None = Field(None, repr=False)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_client_ca_file: Path | None = None

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_case(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> "Settings":
        if self.auth_tokens_file and self.auth_tokens:
            raise ValueError("set AUTH_TOKENS_FILE or AUTH_TOKENS, not both")
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("TLS needs both TLS_CERT_FILE and TLS_KEY_FILE")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise ValueError("TLS_CLIENT_CA_FILE (mutual TLS) needs TLS_CERT_FILE and TLS_KEY_FILE")
        if self.default_limit > self.max_limit:
            raise ValueError(f"DEFAULT_LIMIT ({self.default_limit}) must not exceed MAX_LIMIT ({self.max_limit})")
        if self.gateway_workers > 1:
            self._check_workers()
        shares = sum(arm.share for arm in self.rank_experiments.values())
        if self.rank_experiments and shares != BUCKETS:
            raise ValueError(f"the shares of RANK_EXPERIMENTS add up to {shares}; they must add up to {BUCKETS}")
        if label_of(None) in self.rank_experiments:
            raise ValueError(f"RANK_EXPERIMENTS: {label_of(None)!r} is reserved (the metrics label of no experiment)")
        return self

    def _check_workers(self) -> None:
        """Several workers share one port and need a catalog that several processes can open."""
        workers = f"GATEWAY_WORKERS={self.gateway_workers}"
        if not self.qdrant_url:
            raise ValueError(f"{workers} needs QDRANT_URL: without it the catalog is the Qdrant engine embedded in "
                             "the process, which one process at a time can open; run one worker (GATEWAY_WORKERS=1) "
                             "or set QDRANT_URL to a Qdrant server")
        for variable, port in (("GRPC_ADDRESS", self.grpc_address.rpartition(":")[2]),
                               ("HEALTH_PORT", str(self.health_port))):
            if port == "0":
                raise ValueError(f"{workers} needs a fixed port in {variable} (port 0 would give each worker a "
                                 "different free port; workers share one)")

    @cached_property
    def weights(self) -> Weights:
        """The ranker's weights (RANK_*)."""
        return Weights(visual=self.rank_weight_visual, history=self.rank_weight_history,
                       category=self.rank_weight_category, popularity=self.rank_weight_popularity,
                       dismissed=self.rank_weight_dismissed, half_life_views=self.rank_half_life_views,
                       history_temperature=self.rank_history_temperature, near_duplicate=self.rank_near_duplicate,
                       exclude_viewed=self.rank_exclude_viewed)

    @cached_property
    def experiments(self) -> Experiments:
        """The experiment arms (RANK_EXPERIMENTS), each with the RANK_* weights changed as it says."""
        return Experiments([Arm(name, arm.share, replace(self.weights, **arm.model_dump(exclude={"share"},
                                                                                        exclude_none=True)))
                            for name, arm in self.rank_experiments.items()], self.rank_experiment_salt)

    @property
    def image_limits(self) -> ImageLimits:
        """The bounds on an untrusted image (IMAGE_MAX_*)."""
        return ImageLimits(self.image_max_bytes, self.image_max_pixels, self.image_max_side)

    @property
    def log_level_number(self) -> int:
        return logging.getLevelNamesMapping()[self.log_level]

    @classmethod
    def from_env(cls) -> "Settings":
        """The settings of this process's environment; SettingsError names every variable with a bad value."""
        try:
            return cls()
        except ValidationError as error:
            raise SettingsError(describe(error)) from None
        except pydantic_settings.SettingsError as error:  # a structured value that is not JSON
            found = re.search(r'field "(\w+)"', str(error))
            variable = variable_of(found[1]) if found else "a variable"
            raise SettingsError(f"invalid configuration: {variable}: error parsing value, which must be JSON") from None


def variable_of(field: str) -> str:
    """The environment variable that sets a field (or names it, for errors about several fields)."""
    info = Settings.model_fields.get(field)
    alias = info.validation_alias if info else None
    return alias if isinstance(alias, str) else field.upper()


def describe(error: ValidationError) -> str:
    """One line per problem: the variable, the value given and what is expected (AUTH_TOKENS, REDIS_URL and
    QDRANT_API_KEY take any text, so no secret is ever echoed)."""
    lines = []
    for problem in error.errors():
        field = str(problem["loc"][0]) if problem["loc"] else ""
        message = problem["msg"].removeprefix("Value error, ")
        if not field:
            lines.append(message)
            continue
        if problem["type"] == "bool_parsing":
            message += " (true/false, 1/0, yes/no or on/off)"
        where = "".join(f"[{part}]" for part in problem["loc"][1:])  # inside a structured value
        lines.append(f"{variable_of(field.lower())}{where}={problem['input']!r}: {message}")
    return "invalid configuration: " + "; ".join(lines)
