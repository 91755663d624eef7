"""Pagination for every API list: ``?page=N&page_size=M`` (at most 500)."""

from rest_framework.pagination import PageNumberPagination


class DefaultPagination(PageNumberPagination):
    """Page-number pagination with a client-chosen, bounded page size."""

    page_size_query_param = "page_size"
    max_page_size = 500
