"""One JSON error body everywhere: ``{"ok": false, "error": "...", "status": N}``.

A ``MosaicError`` gets the HTTP status of its class in ``mosaic.errors.STATUS``;
werkzeug's HTTP errors keep theirs; anything else is a bug: logged, and a 500.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, InternalServerError, MethodNotAllowed, NotFound

from mosaic.errors import MosaicError, http_status

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


def handle_mosaic_error(error: MosaicError):
    return error_response(http_status(error), str(error))


def handle_unexpected(error: Exception):
    log.exception("unhandled error")
    return error_response(500, InternalServerError.description)


def register(app: Flask) -> None:
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(MosaicError, handle_mosaic_error)
    app.register_error_handler(Exception, handle_unexpected)
