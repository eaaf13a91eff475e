"""One case of an evaluation suite, as the loader (`evaluation.suite`) gives it and the checks score it."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Case:
    """One test: the conversation sent to the model and the checks its answer must pass.

    messages: {role, content} turns ending with the user's turn (a `prompt` becomes one user turn).
    followups: user turns asked one by one after the model's own answer to the turn before.
    reference_turns: a reference answer per turn, for the judge (turn 1's may also be the check's).
    tools: JSON-schema function specs ({name, description, parameters}), OpenAI wrappers removed.
    line: where the case is in its suite file, so results can point back to it.
    """

    id: str | int
    category: str
    messages: list[dict]
    system: str | None = None
    tools: list[dict] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    line: int = 0
    followups: list[str] = field(default_factory=list)
    reference_turns: list[str] = field(default_factory=list)

    @property
    def turns(self) -> int:
        return 1 + len(self.followups)
