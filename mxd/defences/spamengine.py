"""The spam engine: rspamd over its HTTP protocol (`POST /checkv2`), asked before the 250.

Contract used by the MX (implementation pending in this module):

    async def check(cfg, data, *, ip, helo, mail_from, rcpts, authenticated_results="", hostname="",
                    queue_id="") -> SpamVerdict

never raises: rspamd down, slow (cfg.rspamd_timeout) or answering nonsense gives
SpamVerdict(action="accept", unscored=<why>).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mxd.config import Config


@dataclass(frozen=True)
class SpamVerdict:
    action: str                     # accept quarantine reject soft_reject (mxd's mapping of rspamd's action)
    score: float | None = None
    required_score: float | None = None
    engine_action: str = ""         # rspamd's own word: no action, greylist, add header, rewrite subject, ...
    symbols: dict[str, float] = field(default_factory=dict)
    unscored: str = ""              # why there is no score ("" when scored)
    seconds: float = 0.0            # time rspamd took

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "score": self.score, "required_score": self.required_score,
                "engine_action": self.engine_action, "symbols": self.symbols, "unscored": self.unscored or None}


async def check(cfg: Config, data: bytes, *, ip: str, helo: str, mail_from: str, rcpts: list[str],
                authentication_results: str = "", hostname: str = "", queue_id: str = "") -> SpamVerdict:
    raise NotImplementedError("rspamd client")
