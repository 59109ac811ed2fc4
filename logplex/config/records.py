"""Configuration records shared by the config store, the router and the API.

These are the values the API writes and the router applies: a channel with its tokens and
drains. They are plain frozen records; the store owns persistence, the router owns the
in-memory index built from them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class DrainConfig:
    """One drain of a channel: Logplex-compatible integer id, ``d.<uuid4>`` token, URL."""

    id: int
    token: str
    url: str

    def to_json(self) -> dict[str, object]:
        return {"id": self.id, "token": self.token, "url": self.url}


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """A channel as stored: its name, token names mapped to ``t.<uuid4>`` tokens, and drains."""

    name: str
    tokens: dict[str, str] = field(default_factory=dict)
    drains: tuple[DrainConfig, ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "channel": self.name,
            "tokens": dict(self.tokens),
            "drains": [d.to_json() for d in self.drains],
        }


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """What a ``t.<uuid4>`` token grants: writing into ``channel`` under source ``source``."""

    channel: str
    source: bytes
