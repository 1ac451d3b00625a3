"""Failure handling for shards: a policy that decides whether a failed round is retried."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FailureDecision(enum.Enum):
    RETRY = "retry"
    RAISE = "raise"


class ShardFailedError(RuntimeError):
    """A shard kept failing after every allowed retry of a round."""


@dataclass(frozen=True)
class RoundRetryPolicy:
    """Retry a failed shard's round from its start, at most `max_retries` times per shard and round."""

    max_retries: int

    def decide(self, failures: int) -> FailureDecision:
        """Decide after the `failures`-th failure of one shard in one round (1 for the first)."""
        return FailureDecision.RETRY if failures <= self.max_retries else FailureDecision.RAISE


def describe(error: BaseException) -> str:
    """Format the cause in one line: the error type and the first line of its message."""
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"
