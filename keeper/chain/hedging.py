"""Hedged requests: the first of several copies of one read to answer wins."""

from __future__ import annotations

import asyncio
from typing import Any

from keeper.errors import NOT_ACCEPTED_ERRORS, TRANSIENT_ERRORS

__all__ = ["first_answer", "latency_key"]


async def first_answer(tasks: list[asyncio.Task[Any]]) -> Any:
    """The first task to answer, or to fail for good; a transient failure waits for the others.

    When every copy failed transiently, a failure that may have reached the node (timeout,
    connection lost) is raised over a definite refusal."""
    pending = set(tasks)
    failures: list[BaseException] = []
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            exc = t.exception()
            if exc is None:
                return t.result()
            if not isinstance(exc, TRANSIENT_ERRORS):
                raise exc
            failures.append(exc)
    uncertain = [e for e in failures if not isinstance(e, NOT_ACCEPTED_ERRORS)]
    raise (uncertain or failures)[-1]


def latency_key(payload: Any) -> str:
    if isinstance(payload, list):
        return f"batch:{payload[0].get('method') if payload else ''}:{len(payload)}"
    return str(payload.get("method"))
