from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReasonKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REASON_KIND_UNSPECIFIED: _ClassVar[ReasonKind]
    REASON_KIND_VISUALLY_SIMILAR: _ClassVar[ReasonKind]
    REASON_KIND_SIMILAR_TO_VIEWED: _ClassVar[ReasonKind]
    REASON_KIND_VIEWED_CATEGORY: _ClassVar[ReasonKind]
    REASON_KIND_POPULAR: _ClassVar[ReasonKind]
    REASON_KIND_DIVERSITY: _ClassVar[ReasonKind]
    REASON_KIND_BOOSTED: _ClassVar[ReasonKind]

class FeedbackKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_KIND_UNSPECIFIED: _ClassVar[FeedbackKind]
    FEEDBACK_KIND_VIEW: _ClassVar[FeedbackKind]
    FEEDBACK_KIND_DISMISS: _ClassVar[FeedbackKind]
    FEEDBACK_KIND_PURCHASE: _ClassVar[FeedbackKind]
REASON_KIND_UNSPECIFIED: ReasonKind
REASON_KIND_VISUALLY_SIMILAR: ReasonKind
REASON_KIND_SIMILAR_TO_VIEWED: ReasonKind
REASON_KIND_VIEWED_CATEGORY: ReasonKind
REASON_KIND_POPULAR: ReasonKind
REASON_KIND_DIVERSITY: ReasonKind
REASON_KIND_BOOSTED: ReasonKind
FEEDBACK_KIND_UNSPECIFIED: FeedbackKind
FEEDBACK_KIND_VIEW: FeedbackKind
FEEDBACK_KIND_DISMISS: FeedbackKind
FEEDBACK_KIND_PURCHASE: FeedbackKind

class Filter(_message.Message):
    __slots__ = ("categories", "attributes", "ranges")
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    RANGES_FIELD_NUMBER: _ClassVar[int]
    categories: _containers.RepeatedScalarFieldContainer[str]
    attributes: _containers.RepeatedCompositeFieldContainer[AttributeValues]
    ranges: _containers.RepeatedCompositeFieldContainer[AttributeRange]
    def __init__(self, categories: _Optional[_Iterable[str]] = ..., attributes: _Optional[_Iterable[_Union[AttributeValues, _Mapping]]] = ..., ranges: _Optional[_Iterable[_Union[AttributeRange, _Mapping]]] = ...) -> None: ...

class AttributeValues(_message.Message):
    __slots__ = ("name", "values")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    name: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class AttributeRange(_message.Message):
    __slots__ = ("name", "min", "max")
    NAME_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    name: str
    min: float
    max: float
    def __init__(self, name: _Optional[str] = ..., min: _Optional[float] = ..., max: _Optional[float] = ...) -> None: ...

class Boost(_message.Message):
    __slots__ = ("rule", "key", "values", "weight")
    RULE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    rule: str
    key: str
    values: _containers.RepeatedScalarFieldContainer[str]
    weight: float
    def __init__(self, rule: _Optional[str] = ..., key: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ..., weight: _Optional[float] = ...) -> None: ...

class RecencyDecay(_message.Message):
    __slots__ = ("rule", "attribute", "half_life_days", "weight")
    RULE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    HALF_LIFE_DAYS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    rule: str
    attribute: str
    half_life_days: float
    weight: float
    def __init__(self, rule: _Optional[str] = ..., attribute: _Optional[str] = ..., half_life_days: _Optional[float] = ..., weight: _Optional[float] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("image", "product_id", "user_id", "limit", "filter", "diversity", "boosts", "recency_decay", "experiment")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    BOOSTS_FIELD_NUMBER: _ClassVar[int]
    RECENCY_DECAY_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    product_id: str
    user_id: str
    limit: int
    filter: Filter
    diversity: Diversity
    boosts: _containers.RepeatedCompositeFieldContainer[Boost]
    recency_decay: RecencyDecay
    experiment: str
    def __init__(self, image: _Optional[bytes] = ..., product_id: _Optional[str] = ..., user_id: _Optional[str] = ..., limit: _Optional[int] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., diversity: _Optional[_Union[Diversity, _Mapping]] = ..., boosts: _Optional[_Iterable[_Union[Boost, _Mapping]]] = ..., recency_decay: _Optional[_Union[RecencyDecay, _Mapping]] = ..., experiment: _Optional[str] = ...) -> None: ...

class Diversity(_message.Message):
    __slots__ = ("mmr_lambda", "group_by", "max_per_group")
    MMR_LAMBDA_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_GROUP_FIELD_NUMBER: _ClassVar[int]
    mmr_lambda: float
    group_by: str
    max_per_group: int
    def __init__(self, mmr_lambda: _Optional[float] = ..., group_by: _Optional[str] = ..., max_per_group: _Optional[int] = ...) -> None: ...

class Recommendation(_message.Message):
    __slots__ = ("product_id", "category", "score", "visual_score", "history_score", "attributes", "category_score", "popularity_score", "dismissal_score", "reasons", "rules_score")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    VISUAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    HISTORY_SCORE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_SCORE_FIELD_NUMBER: _ClassVar[int]
    POPULARITY_SCORE_FIELD_NUMBER: _ClassVar[int]
    DISMISSAL_SCORE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    RULES_SCORE_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    category: str
    score: float
    visual_score: float
    history_score: float
    attributes: _containers.ScalarMap[str, str]
    category_score: float
    popularity_score: float
    dismissal_score: float
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    rules_score: float
    def __init__(self, product_id: _Optional[str] = ..., category: _Optional[str] = ..., score: _Optional[float] = ..., visual_score: _Optional[float] = ..., history_score: _Optional[float] = ..., attributes: _Optional[_Mapping[str, str]] = ..., category_score: _Optional[float] = ..., popularity_score: _Optional[float] = ..., dismissal_score: _Optional[float] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., rules_score: _Optional[float] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("kind", "contribution", "product_id", "rule")
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    kind: ReasonKind
    contribution: float
    product_id: str
    rule: str
    def __init__(self, kind: _Optional[_Union[ReasonKind, str]] = ..., contribution: _Optional[float] = ..., product_id: _Optional[str] = ..., rule: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("items", "model", "degraded", "experiment")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Recommendation]
    model: str
    degraded: _containers.RepeatedScalarFieldContainer[str]
    experiment: str
    def __init__(self, items: _Optional[_Iterable[_Union[Recommendation, _Mapping]]] = ..., model: _Optional[str] = ..., degraded: _Optional[_Iterable[str]] = ..., experiment: _Optional[str] = ...) -> None: ...

class RecordViewRequest(_message.Message):
    __slots__ = ("user_id", "product_id")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    product_id: str
    def __init__(self, user_id: _Optional[str] = ..., product_id: _Optional[str] = ...) -> None: ...

class RecordViewResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RecordFeedbackRequest(_message.Message):
    __slots__ = ("user_id", "product_id", "kind")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    product_id: str
    kind: FeedbackKind
    def __init__(self, user_id: _Optional[str] = ..., product_id: _Optional[str] = ..., kind: _Optional[_Union[FeedbackKind, str]] = ...) -> None: ...

class RecordFeedbackResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetHistoryRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class View(_message.Message):
    __slots__ = ("product_id", "viewed_at_ms")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    VIEWED_AT_MS_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    viewed_at_ms: int
    def __init__(self, product_id: _Optional[str] = ..., viewed_at_ms: _Optional[int] = ...) -> None: ...

class GetHistoryResponse(_message.Message):
    __slots__ = ("views", "dismissals")
    VIEWS_FIELD_NUMBER: _ClassVar[int]
    DISMISSALS_FIELD_NUMBER: _ClassVar[int]
    views: _containers.RepeatedCompositeFieldContainer[View]
    dismissals: _containers.RepeatedCompositeFieldContainer[View]
    def __init__(self, views: _Optional[_Iterable[_Union[View, _Mapping]]] = ..., dismissals: _Optional[_Iterable[_Union[View, _Mapping]]] = ...) -> None: ...

class ForgetUserRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class ForgetUserResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Product(_message.Message):
    __slots__ = ("product_id", "image", "category", "attributes")
    class AttributesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    image: bytes
    category: str
    attributes: _containers.ScalarMap[str, str]
    def __init__(self, product_id: _Optional[str] = ..., image: _Optional[bytes] = ..., category: _Optional[str] = ..., attributes: _Optional[_Mapping[str, str]] = ...) -> None: ...

class UpsertProductsResponse(_message.Message):
    __slots__ = ("upserted",)
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    def __init__(self, upserted: _Optional[int] = ...) -> None: ...

class DeleteProductsRequest(_message.Message):
    __slots__ = ("product_ids",)
    PRODUCT_IDS_FIELD_NUMBER: _ClassVar[int]
    product_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, product_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class DeleteProductsResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class GetProductImageRequest(_message.Message):
    __slots__ = ("product_id",)
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    def __init__(self, product_id: _Optional[str] = ...) -> None: ...

class ProductImage(_message.Message):
    __slots__ = ("product_id", "content_type", "data")
    PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    product_id: str
    content_type: str
    data: bytes
    def __init__(self, product_id: _Optional[str] = ..., content_type: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...
