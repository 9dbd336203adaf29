"""REST search over the knowledge bases, filtered by who is asking (DRF token auth)."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.knowledge.models import KnowledgeBase
from apps.knowledge.services.search import (
    SearchNotAllowed,
    knowledge_search,
    search_needs_reason,
    search_readers,
)


class SearchParamsSerializer(serializers.Serializer):
    q = serializers.CharField(max_length=2000, trim_whitespace=True)
    kb = serializers.ListField(child=serializers.SlugField(), required=False, default=list)
    top_k = serializers.IntegerField(min_value=1, max_value=50, default=5)
    userid = serializers.CharField(max_length=64, required=False, allow_blank=False)
    reason = serializers.CharField(max_length=1000, required=False, trim_whitespace=True)


class HitSerializer(serializers.Serializer):
    chunk_id = serializers.IntegerField()
    document = serializers.CharField()
    title = serializers.CharField()
    knowledge_base = serializers.CharField()
    heading = serializers.CharField()
    heading_path = serializers.ListField(child=serializers.CharField())
    text = serializers.CharField()
    document_version = serializers.IntegerField()
    page = serializers.IntegerField(allow_null=True)
    score = serializers.FloatField()


class KnowledgeSearchView(APIView):
    """`GET ?q=…[&kb=slug…][&top_k=5][&userid=…][&reason=…]`: the passages an employee may read.

    Holders of `knowledge.search_all_audiences` search everything, or as any employee with
    `userid`, and must give a `reason`: such searches are access-logged. Everyone else,
    staff included, searches as the employee whose WeCom userid is their username.
    """

    @extend_schema(
        summary="Search the knowledge bases as an employee",
        parameters=[SearchParamsSerializer],
        responses={
            200: inline_serializer(
                "KnowledgeSearchResult",
                {
                    "query": serializers.CharField(),
                    "userid": serializers.CharField(allow_null=True),
                    "hits": HitSerializer(many=True),
                },
            )
        },
        tags=["Knowledge"],
    )
    def get(self, request: Request) -> Response:
        params = SearchParamsSerializer(
            data={
                "q": request.query_params.get("q", ""),
                "kb": request.query_params.getlist("kb"),
                "top_k": request.query_params.get("top_k", 5),
                **{
                    name: request.query_params[name]
                    for name in ("userid", "reason")
                    if name in request.query_params
                },
            }
        )
        params.is_valid(raise_exception=True)
        data = params.validated_data
        try:
            readers = search_readers(user=request.user, userid=data.get("userid"))
        except SearchNotAllowed:
            raise PermissionDenied(
                _("Searching as another employee needs the permission to search all knowledge.")
            ) from None
        if search_needs_reason(user=request.user, readers=readers) and not data.get("reason"):
            return Response(
                {"reason": [_("Give a reason: this search is recorded in the access log.")]},
                status=status.HTTP_400_BAD_REQUEST,
            )
        knowledge_bases = KnowledgeBase.objects.all()
        if data["kb"]:
            knowledge_bases = knowledge_bases.filter(slug__in=data["kb"])
            missing = set(data["kb"]) - {kb.slug for kb in knowledge_bases}
            if missing:
                return Response(
                    {"kb": [_("Unknown knowledge base: %s") % ", ".join(sorted(missing))]},
                    status=status.HTTP_400_BAD_REQUEST,
                )
        hits = knowledge_search(
            user=request.user,
            knowledge_bases=list(knowledge_bases),
            readers=readers,
            query=data["q"],
            top_k=data["top_k"],
            reason=data.get("reason", ""),
        )
        userid = None if readers.unrestricted else next(iter(readers.userids), None)
        return Response(
            {
                "query": data["q"],
                "userid": userid,
                "hits": HitSerializer([hit.as_dict() for hit in hits], many=True).data,
            }
        )
