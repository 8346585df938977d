"""A problem found by a check: a stable code (part of the JSON contract) and a sentence."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Problem:
    code: str
    message: str
    stage: str | None = None

    def to_dict(self) -> dict:
        d = {"code": self.code, "message": self.message}
        if self.stage is not None:
            d["stage"] = self.stage
        return d
