"""One JSON error body everywhere: ``{"ok": false, "error": "...", "status": N}``."""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed, NotFound

from mosaic.query import QueryError

log = logging.getLogger(__name__)


def error_response(status: int, message: str) -> tuple[Response, int]:
    return jsonify(ok=False, error=message, status=status), status


def handle_http_exception(error: HTTPException) -> Response:
    message = error.description or error.name
    if message == NotFound.description:
        message = f"not found: {request.path}"
    elif message == MethodNotAllowed.description:
        message = f"method {request.method} not allowed for {request.path}"
    response, status = error_response(error.code or 500, message)
    for key, value in error.get_headers():  # keep Allow: on 405 and the like
        if key.lower() != "content-type":
            response.headers[key] = value
    return response, status


def handle_query_error(error: QueryError):
    return error_response(400, str(error))


def handle_unexpected(error: Exception):
    log.exception("unhandled error")
    return error_response(500, InternalServerError.description)


def register(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(QueryError, handle_query_error)
    app.register_error_handler(Exception, handle_unexpected)
