"""An institution's side of a federation: `Member`, composed of its round engine, its files, its privacy
account, its key ring and its local learner (see `member.member`)."""

from confide.platform.member.errors import MemberError
from confide.platform.member.member import Member

__all__ = ["Member", "MemberError"]
