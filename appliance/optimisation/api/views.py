from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from appliance.optimisation import services
from appliance.optimisation.api.serializers import (
    GateRunCreateSerializer,
    GateRunSerializer,
    OptimisationJobCreateSerializer,
    OptimisationJobSerializer,
    ProfileSearchCreateSerializer,
    ProfileSearchSerializer,
)
from appliance.optimisation.models import GateRun, OptimisationJob, ProfileSearch


class _Cancel:
    """`POST …/{id}/cancel/`: a pending run never starts; a running one stops at its next step
    (its private Triton or engine goes, as on any end). 409 once it has ended. Audited."""

    serializer_class: Any

    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str | None = None) -> Response:
        row = services.cancel(row=self.get_object(), cancelled_by=request.user.get_username())  # type: ignore[attr-defined]
        return Response(self.serializer_class(self.get_queryset().get(pk=row.pk)).data)  # type: ignore[attr-defined]


class OptimisationJobViewSet(_Cancel, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Optimisation jobs: from an ONNX version, candidates (FP16, INT8 dynamic, INT8 static,
    INT8 mixed precision) measured on the CPU and judged by the accuracy gate on a
    validation set; each becomes a child version with its gate result. Creating one
    starts it (202); its progress, candidates and recommendation are read back here."""

    queryset = OptimisationJob.objects.select_related("source__model").prefetch_related("candidates__version")
    serializer_class = OptimisationJobSerializer
    resource = "optimisation_job"

    def get_queryset(self) -> QuerySet[OptimisationJob]:
        qs = super().get_queryset()
        model = self.request.query_params.get("model")
        return qs.filter(source__model__name=model) if model else qs

    @extend_schema(parameters=[OpenApiParameter("model", str, description="only jobs of this model's versions")])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=OptimisationJobCreateSerializer, responses={202: OptimisationJobSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = OptimisationJobCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        job = services.optimisation_job_create(
            source=data["version"], validation_set=data["validation_set"], calibration_set=data.get("calibration_set"),
            kinds=data["kinds"], requested_by=request.user.get_username(),
        )  # fmt: skip
        return Response(OptimisationJobSerializer(job).data, status=status.HTTP_202_ACCEPTED)


class ProfileSearchViewSet(_Cancel, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Serving-profile searches: for a version and a CPU node, a small grid of profiles (max
    batch size, instance count, queue delay) measured under load on the optimiser's private
    Triton, and the profile with the most throughput whose p99 meets the objective. Creating
    one starts it (202); `apply` makes the recommendation the model's serving profile."""

    queryset = ProfileSearch.objects.select_related("version__model").prefetch_related("results")
    serializer_class = ProfileSearchSerializer
    resource = "profile_search"

    def get_queryset(self) -> QuerySet[ProfileSearch]:
        qs = super().get_queryset()
        model = self.request.query_params.get("model")
        return qs.filter(version__model__name=model) if model else qs

    @extend_schema(parameters=[OpenApiParameter("model", str, description="only searches of this model's versions")])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=ProfileSearchCreateSerializer, responses={202: ProfileSearchSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = ProfileSearchCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        search = services.profile_search_create(
            version=data["version"], node=data["node"], objective_p99_ms=data["objective_p99_ms"],
            concurrency=data["concurrency"], requests=data["requests"], grid=data.get("grid"),
            input_set=data.get("input_set"), time_limit_s=data.get("time_limit_s"),
            requested_by=request.user.get_username(),
        )  # fmt: skip
        return Response(ProfileSearchSerializer(search).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(request=None, responses=ProfileSearchSerializer)
    @action(detail=True, methods=["post"])
    def apply(self, request: Request, pk: str | None = None) -> Response:
        """The recommended profile becomes the model's serving profile (audited as a model
        update; it takes effect at the model's next rollout). 409 before the search succeeded,
        when no profile met the objective, or when the model's profile changed meanwhile."""
        search = services.profile_search_apply(search=self.get_object(), applied_by=request.user.get_username())
        return Response(ProfileSearchSerializer(self.get_queryset().get(pk=search.pk)).data)


class GateRunViewSet(_Cancel, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Gate runs: a version that no optimisation job made (an uploaded child: new weights of a
    generative model, an externally quantised ONNX model) judged against its parent on the
    model's validation sets, both measured in the same run on the optimiser (ONNX Runtime on
    the CPU; a generative version on its own vLLM engine with the nodes' command line). Each
    set's verdict becomes the version's gate result, which deployment reads. Creating one
    starts it (202)."""

    queryset = GateRun.objects.select_related("version__model")
    serializer_class = GateRunSerializer
    resource = "gate_run"

    def get_queryset(self) -> QuerySet[GateRun]:
        qs = super().get_queryset()
        model = self.request.query_params.get("model")
        return qs.filter(version__model__name=model) if model else qs

    @extend_schema(parameters=[OpenApiParameter("model", str, description="only runs of this model's versions")])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=GateRunCreateSerializer, responses={202: GateRunSerializer})
    def create(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        body = GateRunCreateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        run = services.gate_run_create(version=data["version"], set_names=data.get("validation_sets"),
                                       requested_by=request.user.get_username())  # fmt: skip
        return Response(GateRunSerializer(self.get_queryset().get(pk=run.pk)).data, status=status.HTTP_202_ACCEPTED)
