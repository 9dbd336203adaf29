"""REST search over the knowledge bases, filtered by who is asking (DRF token auth)."""

from __future__ import annotations

from django.utils.translation import gettext_lazy as _
from rest_framework import serializers, status
from rest_framework.exceptions import PermissionDenied
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.knowledge.models import KnowledgeBase
from apps.knowledge.services.retrieval import knowledge_retrieve


class SearchParamsSerializer(serializers.Serializer):
    q = serializers.CharField(max_length=2000, trim_whitespace=True)
    kb = serializers.ListField(child=serializers.SlugField(), required=False, default=list)
    top_k = serializers.IntegerField(min_value=1, max_value=50, default=5)
    userid = serializers.CharField(max_length=64, required=False, allow_blank=False)


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
    """`GET ?q=…[&kb=slug…][&top_k=5][&userid=…]`: the passages an employee may read.

    Staff search everything, or as any employee with `userid`. Other users search as the
    employee whose WeCom userid is their username, and may not pass `userid`.
    """

    def get(self, request: Request) -> Response:
        params = SearchParamsSerializer(
            data={
                "q": request.query_params.get("q", ""),
                "kb": request.query_params.getlist("kb"),
                "top_k": request.query_params.get("top_k", 5),
                **(
                    {"userid": request.query_params["userid"]}
                    if "userid" in request.query_params
                    else {}
                ),
            }
        )
        params.is_valid(raise_exception=True)
        data = params.validated_data
        if request.user.is_staff:
            userid = data.get("userid")
        elif "userid" in data:
            raise PermissionDenied(_("Only staff may search as another employee."))
        else:
            userid = request.user.get_username()
        knowledge_bases = KnowledgeBase.objects.all()
        if data["kb"]:
            knowledge_bases = knowledge_bases.filter(slug__in=data["kb"])
            missing = set(data["kb"]) - set(knowledge_bases.values_list("slug", flat=True))
            if missing:
                return Response(
                    {"kb": [_("Unknown knowledge base: %s") % ", ".join(sorted(missing))]},
                    status=status.HTTP_400_BAD_REQUEST,
                )
        hits = knowledge_retrieve(
            bot_kb_ids=list(knowledge_bases.values_list("pk", flat=True)),
            userid=userid,
            query=data["q"],
            top_k=data["top_k"],
        )
        return Response(
            {
                "query": data["q"],
                "userid": userid,
                "hits": HitSerializer([hit.as_dict() for hit in hits], many=True).data,
            }
        )
