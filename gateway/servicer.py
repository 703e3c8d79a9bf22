"""gRPC servicers: protobuf ↔ domain conversion only; the work is done by the injected pipeline."""

from collections.abc import AsyncIterator

import grpc

from ranker import Boost, ReasonKind, RecencyDecay, Rules
from recsys_api.v1 import recsys_pb2 as pb
from recsys_api.v1 import recsys_pb2_grpc as pb_grpc

from .domain import AttributeRange, AttributeValues, Feedback, InvalidArgument, ProductFilter, View
from .images import THUMBNAIL_TYPE
from .indexer import Indexer, IndexReport, NewProduct
from .pipeline import Diversity, Pipeline, RecommendQuery
from .serving import Serving


class RecommenderServicer(pb_grpc.RecommenderServicer):
    """recsys.v1.Recommender over the serving Pipeline, read once per call."""

    def __init__(self, serving: Serving) -> None:
        self._serving = serving

    @property
    def _pipeline(self) -> Pipeline:
        return self._serving.pipeline

    async def Recommend(self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
                        ) -> pb.RecommendResponse:
        which = request.WhichOneof("query")
        query = RecommendQuery(
            user_id=request.user_id,
            image=request.image if which == "image" else None,
            product_id=request.product_id if which == "product_id" else None,
            limit=request.limit,
            where=filter_of(request.filter),
            diversity=diversity_of(request.diversity) if request.HasField("diversity") else None,
            rules=rules_of(request),
            experiment=request.experiment,
        )
        result = await self._pipeline.recommend(query, context.time_remaining())
        return pb.RecommendResponse(
            items=[pb.Recommendation(product_id=item.product_id, category=item.category, score=item.score,
                                     visual_score=item.visual_score, history_score=item.history_score,
                                     category_score=item.category_score, popularity_score=item.popularity_score,
                                     dismissal_score=item.dismissal_score, rules_score=item.rules_score,
                                     attributes=item.attributes,
                                     reasons=[pb.Reason(kind=REASON_KIND_OF[reason.kind],
                                                        contribution=reason.contribution,
                                                        product_id=reason.product_id, rule=reason.rule)
                                              for reason in item.reasons])
                   for item in result.items],
            model=result.model,
            degraded=list(result.degraded),
            experiment=result.experiment,
        )

    async def RecordView(self, request: pb.RecordViewRequest, context: grpc.aio.ServicerContext
                         ) -> pb.RecordViewResponse:
        await self._pipeline.record_feedback(request.user_id, request.product_id)
        return pb.RecordViewResponse()

    async def RecordFeedback(self, request: pb.RecordFeedbackRequest, context: grpc.aio.ServicerContext
                             ) -> pb.RecordFeedbackResponse:
        feedback = FEEDBACK_OF.get(request.kind)
        if feedback is None:
            raise InvalidArgument("kind must be FEEDBACK_KIND_VIEW, FEEDBACK_KIND_DISMISS or FEEDBACK_KIND_PURCHASE")
        await self._pipeline.record_feedback(request.user_id, request.product_id, feedback)
        return pb.RecordFeedbackResponse()

    async def GetHistory(self, request: pb.GetHistoryRequest, context: grpc.aio.ServicerContext
                         ) -> pb.GetHistoryResponse:
        record = await self._pipeline.shopper_record(request.user_id)
        return pb.GetHistoryResponse(views=[_view(view) for view in record.views],
                                     dismissals=[_view(dismissal) for dismissal in record.dismissals])

    async def ForgetUser(self, request: pb.ForgetUserRequest, context: grpc.aio.ServicerContext
                         ) -> pb.ForgetUserResponse:
        await self._pipeline.forget(request.user_id)
        return pb.ForgetUserResponse()


# Each ranker reason is the proto's REASON_KIND_<name> (tests/test_protos.py checks that every one exists).
REASON_KIND_OF = {kind: f"REASON_KIND_{kind.name}" for kind in ReasonKind}


def diversity_of(message: pb.Diversity) -> Diversity:
    """The request's diversity; an unset mmr_lambda leaves the server's default."""
    return Diversity(message.mmr_lambda if message.HasField("mmr_lambda") else None, message.group_by,
                     message.max_per_group)


def filter_of(message: pb.Filter) -> ProductFilter:
    """The request's filter; an unset bound of a range is None."""
    return ProductFilter(
        tuple(message.categories),
        tuple(AttributeValues(each.name, tuple(each.values)) for each in message.attributes),
        tuple(AttributeRange(each.name, each.min if each.HasField("min") else None,
                             each.max if each.HasField("max") else None) for each in message.ranges))


def rules_of(request: pb.RecommendRequest) -> Rules:
    """The request's boosts and recency decay."""
    decay = request.recency_decay
    return Rules(tuple(Boost(each.rule, each.key, frozenset(each.values), each.weight) for each in request.boosts),
                 RecencyDecay(decay.rule, decay.attribute, decay.half_life_days, decay.weight)
                 if request.HasField("recency_decay") else None)


FEEDBACK_OF = {pb.FEEDBACK_KIND_VIEW: Feedback.VIEW, pb.FEEDBACK_KIND_DISMISS: Feedback.DISMISS,
               pb.FEEDBACK_KIND_PURCHASE: Feedback.PURCHASE}


def _view(view: View) -> pb.View:
    return pb.View(product_id=view.product_id, viewed_at_ms=view.viewed_at_ms)


class CatalogServicer(pb_grpc.CatalogServicer):
    """recsys.v1.Catalog over the same Indexer the bulk CLI uses (the serving one, read per batch)."""

    def __init__(self, serving: Serving, batch_size: int) -> None:
        self._serving = serving
        self._batch_size = batch_size

    @property
    def _pipeline(self) -> Pipeline:
        return self._serving.pipeline

    @property
    def _indexer(self) -> Indexer:
        return self._serving.indexer

    async def UpsertProducts(self, request_iterator: AsyncIterator[pb.Product],
                             context: grpc.aio.ServicerContext) -> pb.UpsertProductsResponse:
        report = IndexReport()
        batch: list[NewProduct] = []
        async for product in request_iterator:
            batch.append(NewProduct(product.product_id, product.category, product.image, dict(product.attributes)))
            if len(batch) == self._batch_size:
                report.add(await self._store(batch, report))
                batch = []
        if batch:
            report.add(await self._store(batch, report))
        return pb.UpsertProductsResponse(upserted=report.stored)

    async def _store(self, batch: list[NewProduct], so_far: IndexReport) -> IndexReport:
        if not all(p.image for p in batch):
            missing = next(p.product_id for p in batch if not p.image)
            raise InvalidArgument(f"product {missing!r} has no image")
        report = await self._indexer.index(batch)
        self._pipeline.products_changed(product.product_id for product in batch)
        if report.rejected:
            product_id, reason = report.rejected[0]
            raise InvalidArgument(f"product {product_id!r}: {reason}; the upsert stopped there "
                                  f"after storing {so_far.stored + report.stored} valid products")
        return report

    async def GetProductImage(self, request: pb.GetProductImageRequest, context: grpc.aio.ServicerContext
                              ) -> pb.ProductImage:
        data = await self._pipeline.product_image(request.product_id)
        return pb.ProductImage(product_id=request.product_id, content_type=THUMBNAIL_TYPE, data=data)

    async def DeleteProducts(self, request: pb.DeleteProductsRequest, context: grpc.aio.ServicerContext
                             ) -> pb.DeleteProductsResponse:
        return pb.DeleteProductsResponse(deleted=await self._pipeline.delete_products(list(request.product_ids)))
