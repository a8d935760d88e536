"""Load benchmark: a real coordinator (its own process, TLS on loopback) taking one round of
uploads from many simulated institutions.

For each (institutions, adapter size) case: a federation file with that many members, a
coordinator started with ``run_coordinator`` in a subprocess, the key set-up published by the
key holder, and one round whose uploads are pre-made envelopes (no training): one real encrypted
update, copied under a fresh seed per institution (the coordinator cannot tell such a copy from
a real upload; it would not decrypt to anything useful, which the benchmark does not need).
Institutions upload in parallel (``--threads`` HTTPS clients, each request signed with the
institution's identity and pinned to the coordinator's certificate), each with its mask shares
sealed to the committee (`secure_sum`, drawn afresh per institution before the round). Once the
round is summed, the committee reveals; only as many of its members as sum the round at once do
(``min(committee, t + 2)``: the rest drop out), each fetching its shares of every upload and
revealing over HTTPS.
Measured: round latency (from the round opening, by the coordinator's clock, to the benchmark
seeing it summed and unmasked), uploads per second, the time from the last receipt to the sum,
the committee's reveal time, and the coordinator's peak resident memory (VmHWM) and CPU time.
The baselines, measured in the same run, are the coordinator's resident memory idling with the
keys published, a numpy float32 sum of the same updates (the sum's physical floor), and, with
``--baseline-ref REF``, the same cases run by the benchmark of an older commit (checked out in a
temporary git worktree): the scheme before secure aggregation for the default REF.

Prints one JSON object: one entry per case ("<institutions>x<params>"). Cases whose uploads
would exceed ``--max-upload-gb`` in total are skipped and listed. Not a test: nothing here
gates on time. Bounded: every wait has a deadline; loopback only.

Usage: python benchmarks/load.py [--institutions 3 10 100 500] [--sizes 100000 1000000]
                                 [--threads 8] [--max-upload-gb 1.0] [--plot docs/load.png]
                                 [--baseline-ref beb6b35]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from confide.aggregation import create_key_material, encrypt_update, read_header, seal_secret
from confide.aggregation.integrity import contribution_tags, integrity_key
from confide.aggregation.params import CkksParameters
from confide.aggregation.wire import KIND_UPDATE, SEED_BYTES, build_envelope, read_seeds
from confide.formats import ContributionStatement, DeclaredSpend, KeyCertificate, policy_sha256, sha256
from confide.identity import Identity, roster_identities
from confide.platform.protocol import unmask_quorum
from confide.platform.secure_sum import Reveals, mask_upload, share_digests
from confide.platform.service.client import Backoff, CoordinatorClient

LAYOUT_HASH = "ab" * 32
START_TIMEOUT_S = 120
ROUND_TIMEOUT_S = 1800

SERVE = """
import sys
from pathlib import Path
from confide.platform.service.server import CoordinatorSettings, run_coordinator
settings = CoordinatorSettings(port=int(sys.argv[3]), tick_s=0.2, max_upload_bytes=int(sys.argv[4]),
                               max_connections=1000, log_interval_s=3600)
run_coordinator(Path(sys.argv[1]), Path(sys.argv[2]), settings)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory of process ``pid`` now (VmRSS) and at its peak (VmHWM), in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {f: int(re.search(rf"^{f}:\s+(\d+) kB", status, re.M).group(1)) / 1024 for f in ("VmRSS", "VmHWM")}


def federation_file(root: Path, n: int, params: CkksParameters) -> tuple[Path, dict[str, Identity]]:
    identities = {f"m{i:03d}": Identity.generate(f"m{i:03d}") for i in range(n)}
    lines = ["kind: federation", "federation_id: load", "roster:"]
    for i, ident in identities.items():
        entry = ident.public.to_roster_entry(i)
        lines += [f"  - id: {i}", f"    signing_key: {entry['signing_key']}",
                  f"    sealing_key: {entry['sealing_key']}"]
    lines += ["model:", "  source: random:tiny-bert", "  labels: [x, y]", "  max_length_tokens: 16",
              "rounds: 1", f"min_institutions: {n}", f"round_deadline_s: {ROUND_TIMEOUT_S}",
              "ckks:", f"  poly_modulus_degree: {params.poly_modulus_degree}",
              f"  coeff_mod_bit_sizes: {list(params.coeff_mod_bit_sizes)}", f"  scale_bits: {params.scale_bits}",
              f"  upload_precision_bits: {params.upload_precision_bits}"]
    path = root / "federation.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path, identities


def copies(envelope: bytes, n: int) -> list[bytes]:
    """``n`` envelopes with ``envelope``'s ciphertexts, each under a fresh seed."""
    h = read_header(envelope)
    blobs = [envelope[o : o + size] for o, size in zip(h.ciphertext_offsets(), h.ciphertext_lengths)]
    assert len(read_seeds(envelope, h)) == 1
    return [build_envelope(KIND_UPDATE, h.key_id, h.layout_hash, h.n_values, h.slots, [os.urandom(SEED_BYTES)],
                           h.bits, h.last_bits, blobs) for _ in range(n)]


def statement(identity: Identity, secret, key: bytes, round_index: int, envelope: bytes, federation,
              shares: bytes) -> ContributionStatement:
    """The member's signed statement of its upload, with its integrity tags and shares, as `Member` makes it."""
    header = read_header(envelope)
    tags = contribution_tags(secret, key, "load", round_index, identity.institution_id, envelope)
    return identity.sign_document(ContributionStatement(
        federation="load", round=round_index, institution=identity.institution_id, key_id=header.key_id,
        envelope_sha256=sha256(envelope), seed=read_seeds(envelope, header)[0].hex(), tags=tags,
        shares=share_digests(federation, shares)))


def cpu_s(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def declared(federation) -> DeclaredSpend:
    privacy = federation.privacy
    return DeclaredSpend(max(1.0, privacy.min_noise_multiplier), 0.1, federation.training.steps_per_round, 1.0,
                         privacy.delta, privacy.accountant, "00" * 32)


def numpy_float32_sum_s(n: int, size: int) -> float:
    rows = np.random.default_rng(0).normal(0, 0.1, (min(n, 16), size)).astype(np.float32)
    start = time.perf_counter()
    total = rows[0].copy()
    for i in range(1, n):
        total += rows[i % len(rows)]
    return time.perf_counter() - start


def run_case(n: int, size: int, threads: int) -> dict:
    from confide.policies import load_federation

    params = CkksParameters()
    with tempfile.TemporaryDirectory(prefix="confide-load-") as tmp:
        root = Path(tmp)
        path, identities = federation_file(root, n, params)
        federation = load_federation(path)
        secret = create_key_material(params)
        premade = copies(encrypt_update(secret, np.random.default_rng(0).normal(0, 0.1, size), 1.0, LAYOUT_HASH), n)
        port, state = free_port(), root / "coordinator"
        max_upload = len(premade[0]) + 1024 * 1024  # room for the mask shares
        log = open(root / "coordinator.log", "w")
        process = subprocess.Popen([sys.executable, "-c", SERVE, str(path), str(state), str(port), str(max_upload)],
                                   env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=log, stderr=subprocess.STDOUT)
        clients: list[CoordinatorClient] = []
        try:
            pin = wait_for_coordinator(process, port, state, root)

            def client(member: str) -> CoordinatorClient:
                made = CoordinatorClient(f"https://127.0.0.1:{port}", identities[member], "load", pin=pin,
                                         backoff=Backoff(first_s=0.1, max_s=1.0, give_up_after_s=120))
                clients.append(made)
                return made

            holder = client(next(iter(identities)))
            raw = secret.to_bytes()
            sealed = {i: seal_secret(raw, ident.public.sealing_public, i, secret.key_id)
                      for i, ident in identities.items()}
            holder_id = next(iter(identities))
            certificate = identities[holder_id].sign_document(KeyCertificate(
                federation="load", federation_sha256=policy_sha256(federation), key_holder=holder_id,
                key_id=secret.key_id,
                params=params.model_dump(mode="json"), public_context_sha256=sha256(secret.public_context_bytes()),
                layout_hash=LAYOUT_HASH, n_values=size,
                sealed_sha256={i: sha256(b) for i, b in sorted(sealed.items())}))
            holder.publish_keys(secret.key_id, LAYOUT_HASH, secret.public_context_bytes(), sealed, size, certificate)
            view = wait_until(holder, lambda v: bool(v.rounds) and v.rounds[-1].status == "open", "round 1 to open")
            idle = memory_mib(process.pid)["VmRSS"]
            spend = declared(federation)
            members = list(identities)

            key = integrity_key(secret.to_bytes(), secret.key_id)
            round_index = view.rounds[-1].index
            roster = roster_identities(federation.roster)
            started = time.perf_counter()
            shares = [mask_upload(federation, roster, secret.key_id, round_index, m)[1] for m in members]
            share_s = (time.perf_counter() - started) / n
            statements = [statement(identities[m], secret, key, round_index, envelope, federation, bundle)
                          for m, envelope, bundle in zip(members, premade, shares)]
            committee = federation.committee
            revealing = committee[: unmask_quorum(len(committee), federation.unmask_threshold)]  # the rest drop out

            def upload(i: int) -> float:
                start = time.perf_counter()
                client(members[i]).upload(round_index, premade[i], None, spend, statements[i], shares[i])
                return time.perf_counter() - start

            def reveal(holder: str) -> float:
                start = time.perf_counter()
                made = client(holder)
                contributions, mine = made.unmask_request(round_index)
                made.reveal(round_index, Reveals(root / "reveals" / holder, federation, roster, identities[holder])
                            .reveal(round_index, secret.key_id, contributions, mine))
                return time.perf_counter() - start

            cpu_before = cpu_s(process.pid)
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=threads) as pool:
                upload_s = list(pool.map(upload, range(n)))
            uploaded_s = time.perf_counter() - started
            last_upload = time.time()
            wait_until(holder, lambda v: v.rounds[-1].status in ("unmasking", "failed"), "the sum")
            summed = time.time()
            with ThreadPoolExecutor(max_workers=min(threads, len(revealing))) as pool:
                reveal_s = list(pool.map(reveal, revealing))
            done = wait_until(holder, lambda v: v.rounds[-1].status in ("summed", "closed", "failed"), "the reveals")
            unmasked = time.time()
            latency = unmasked - view.rounds[-1].opened_at
            peak = memory_mib(process.pid)["VmHWM"]
            round_view = done.rounds[-1]
            if round_view.status == "failed":
                raise RuntimeError(f"round failed: {round_view.failure}")
            return {
                "institutions": n,
                "n_params": size,
                "upload_bytes": len(premade[0]) + len(shares[0]),
                "shares_bytes": len(shares[0]),
                "upload_bytes_per_param": (len(premade[0]) + len(shares[0])) / size,
                "member_mask_and_share_s": share_s,
                "round_latency_s": latency,
                "uploads_per_s": n / uploaded_s,
                "upload_s_median": float(np.median(upload_s)),
                "sum_after_last_upload_s": summed - last_upload,
                "committee": len(committee),
                "committee_revealing": len(revealing),
                "reveal_s_median": float(np.median(reveal_s)),
                "unmasked_after_sum_s": unmasked - summed,
                "coordinator_cpu_s": cpu_s(process.pid) - cpu_before,
                "coordinator_idle_rss_mib": idle,
                "coordinator_peak_rss_mib": peak,
                "baseline_numpy_float32_sum_s": numpy_float32_sum_s(n, size),
                "contributors": round_view.contributors,
            }
        finally:
            for made in clients:
                made.close()
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=30)
            log.close()


def wait_for_coordinator(process: subprocess.Popen, port: int, state: Path, root: Path) -> str:
    fingerprint = state / "tls" / "fingerprint.txt"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the coordinator exited: " + (root / "coordinator.log").read_text()[-2000:])
        if fingerprint.exists():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return fingerprint.read_text().strip()
            except OSError:
                pass
        time.sleep(0.1)
    raise RuntimeError("the coordinator did not start in time")


def wait_until(client: CoordinatorClient, done, what: str):
    deadline = time.monotonic() + ROUND_TIMEOUT_S
    view = client.federation()
    while not done(view):
        if time.monotonic() > deadline:
            raise RuntimeError(f"gave up waiting for {what}")
        view = client.federation(after_revision=view.revision, wait_s=5.0)
    return view


@contextlib.contextmanager
def baseline_tree(ref: str | None):
    """`ref` checked out in a temporary git worktree (None: no baseline), removed afterwards."""
    if ref is None:
        yield None
        return
    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="confide-baseline-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "-C", str(repo), "worktree", "add", "--detach", str(tree), ref], check=True,
                       capture_output=True)
        try:
            yield tree
        finally:
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(tree)], check=False,
                           capture_output=True)


def run_baseline(tree: Path, n: int, size: int, threads: int) -> dict:
    """One case run by the older tree's own benchmark and code."""
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    done = subprocess.run([sys.executable, str(tree / "benchmarks" / "load.py"), "--institutions", str(n),
                           "--sizes", str(size), "--threads", str(threads), "--max-upload-gb", "1000"], env=env,
                          check=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=2 * ROUND_TIMEOUT_S)
    return json.loads(done.stdout)["cases"][f"{n}x{size}"]


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    sizes = sorted({r["n_params"] for r in results.values()})
    for size in sizes:
        rows = sorted((r for r in results.values() if r["n_params"] == size), key=lambda r: r["institutions"])
        xs = [r["institutions"] for r in rows]
        left.plot(xs, [r["round_latency_s"] for r in rows], marker="o", label=f"{size:.0e} params")
        right.plot(xs, [r["coordinator_peak_rss_mib"] for r in rows], marker="o", label=f"{size:.0e} params")
    for ax, label in ((left, "round latency (s)"), (right, "coordinator peak RSS (MiB)")):
        ax.set_xscale("log")
        ax.set_xlabel("institutions")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--institutions", type=int, nargs="+", default=[3, 10, 100, 500])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**5, 10**6])
    parser.add_argument("--threads", type=int, default=8, help="concurrent uploading clients")
    parser.add_argument("--max-upload-gb", type=float, default=1.0, help="skip cases uploading more in total")
    parser.add_argument("--plot", type=Path, default=None, help="write latency and memory plots here")
    parser.add_argument("--baseline-ref", default=None,
                        help="also run these cases with the benchmark of this commit (beb6b35: before secure "
                             "aggregation), in the same run, and report the ratios")
    args = parser.parse_args(argv)
    bytes_per_param = CkksParameters().upload_bits() / 8
    results: dict = {}
    baselines: dict = {}
    skipped = []
    with baseline_tree(args.baseline_ref) as tree:
        for size in args.sizes:
            for n in args.institutions:
                case = f"{n}x{size}"
                if n * size * bytes_per_param > args.max_upload_gb * 1e9:
                    skipped.append(case)
                    continue
                if tree is not None:  # case by case, so both schemes see the machine in the same state
                    baselines[case] = run_baseline(tree, n, size, args.threads)
                    print(json.dumps({"baseline": baselines[case]}), file=sys.stderr)
                results[case] = run_case(n, size, args.threads)
                print(json.dumps(results[case]), file=sys.stderr)
    if args.plot is not None and results:
        plot(results, args.plot)
    out = {"cases": results, "skipped_over_upload_budget": skipped, "threads": args.threads,
           "load_average_after": os.getloadavg()}
    if baselines:
        out["baseline_ref"] = args.baseline_ref
        out["baseline_cases"] = baselines
        out["latency_ratio"] = {case: results[case]["round_latency_s"] / b["round_latency_s"]
                                for case, b in baselines.items()}
        out["upload_bytes_ratio"] = {case: results[case]["upload_bytes"] / b["upload_bytes"]
                                     for case, b in baselines.items()}
    json.dump(out, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
