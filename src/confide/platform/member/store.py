"""The member's files in one federation, owned by one type: its record and what the record names.

    <state_dir>/federations/<fed>/member.json         the round record (`engine.MemberRecord`; 0600)
    <state_dir>/federations/<fed>/rounds/rN.envelope  our encrypted update for round N
    <state_dir>/federations/<fed>/rounds/rN.shares    its mask shares, sealed to the committee
    <state_dir>/federations/<fed>/adapter-rN.npy      the shared adapter after round N, with the server
                                                      velocity (`server_step`; float64, 0600)
    <state_dir>/federations/<fed>/reveals/            the committee's once-per-round reveals (`secure_sum`)

The key ring (`keyring`) keeps its own two files beside them, and the ledger lives under
<state_dir>/ledger. Every write is atomic; the record is written last, after the work it names.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from confide.formats import write_atomically
from confide.platform.member.engine import MemberRecord
from confide.platform.member.errors import MemberError


class MemberStoreError(MemberError):
    """The member's files disagree with its record, or cannot be read."""


class MemberStore:
    """Reads and writes the member's files under `directory` (created if missing)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    @property
    def record_path(self) -> Path:
        return self.dir / "member.json"

    @property
    def reveals_dir(self) -> Path:
        return self.dir / "reveals"

    # -------------------------------------------------------------------------------- the record
    def load_record(self, dataset_id: str) -> MemberRecord:
        """The record (a fresh one if the member never took part). MemberStoreError if it is of another
        dataset, unreadable or damaged."""
        path = self.record_path
        if not path.exists():
            return MemberRecord(dataset_id)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise MemberStoreError(f"{path} cannot be read ({exc})", "restore the federation's state directory "
                                   "from a backup") from None
        record = MemberRecord.from_dict(data, str(path))
        if record.dataset_id != dataset_id:
            raise MemberStoreError(f"{path}: this federation was joined with dataset {record.dataset_id!r}, the "
                                   f"policy now names {dataset_id!r}",
                                   "set data.dataset_id back; a federation keeps one dataset")
        return record

    def commit(self, record: MemberRecord) -> None:
        """Make `record` the member's durable state (one atomic write), after the work it records is done."""
        write_atomically(self.record_path, json.dumps(record.to_dict(), indent=1).encode(), mode=0o600)

    # ------------------------------------------------------------------------------------ uploads
    def envelope_path(self, round_index: int) -> Path:
        return self.dir / "rounds" / f"r{round_index}.envelope"

    def envelope(self, round_index: int) -> bytes | None:
        """Our encrypted update of the round, if written."""
        path = self.envelope_path(round_index)
        return path.read_bytes() if path.exists() else None

    def shares(self, round_index: int) -> bytes:
        return (self.dir / "rounds" / f"r{round_index}.shares").read_bytes()

    def write_upload(self, round_index: int, envelope: bytes, shares: bytes) -> None:
        """The shares first, then the envelope: a written envelope is what says "trained"."""
        write_atomically(self.dir / "rounds" / f"r{round_index}.shares", shares)
        write_atomically(self.envelope_path(round_index), envelope)

    # ----------------------------------------------------------------------------------- adapters
    def adapter(self, round_index: int) -> np.ndarray | None:
        """The adapter saved after `round_index` (None: round 0, the initial adapter from the seed)."""
        if round_index == 0:
            return None
        path = self.adapter_path(round_index)
        if not path.exists():
            raise MemberStoreError(f"{path} is missing but member.json says round {round_index} was applied",
                                   "restore the federation's state directory from the same backup as member.json")
        return np.load(path)

    def adapter_path(self, round_index: int) -> Path:
        return self.dir / f"adapter-r{round_index}.npy"

    def save_adapter(self, round_index: int, saved: np.ndarray) -> None:
        """Write the round's adapter (and velocity), readable by its owner only: it is a raw decryption
        (see the threat model). It is the member's state once the record names the round."""
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(saved, dtype=np.float64))
        write_atomically(self.adapter_path(round_index), buffer.getvalue(), mode=0o600)

    def drop_adapters_before(self, round_index: int) -> None:
        """Once the record names `round_index`, the adapters of other rounds are no longer needed."""
        for path in self.dir.glob("adapter-r*.npy"):
            if path.name != self.adapter_path(round_index).name:
                path.unlink(missing_ok=True)
