"""Every ``VectorIndex`` passes ``VectorIndexContract``; the two agree with each other and
with a brute-force reference; backend-specific failure modes (locks, corruption, an
unreachable server) surface as our errors with messages a user can act on."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import qdrant_edge as qe
from qdrant_client import QdrantClient
from qdrant_client.models import HnswConfigDiff, ScalarQuantization

from connectors.base import PUBLIC, Acl
from indexing.errors import IndexingError, IndexLockedError, IndexUnavailableError
from indexing.index import (
    EXACT_SEARCH_MAX_POINTS,
    HNSW_EF,
    HNSW_LINKED_FIELDS,
    HNSW_PAYLOAD_M,
    KEYWORD_FIELDS,
    AccessFilter,
    IndexPoint,
    SearchPlan,
    VectorIndex,
    open_index,
    plan_search,
)
from indexing.qdrant_edge import EdgeVectorIndex
from indexing.qdrant_server import QdrantServerIndex
from tests.contract.vector_index_contract import (
    DIM,
    IDENTITY,
    KEYWORDS,
    MakeIndex,
    VectorIndexContract,
    payload,
    point,
    unit,
)

ROOT = Path(__file__).resolve().parents[2]


class TestEdgeVectorIndex(VectorIndexContract):
    @pytest.fixture
    def make_index(self, tmp_path: Path) -> MakeIndex:
        return lambda: EdgeVectorIndex(tmp_path / "index")


class TestQdrantServerIndex(VectorIndexContract):
    @pytest.fixture
    def make_index(self) -> Iterator[MakeIndex]:
        client = QdrantClient(":memory:")
        yield lambda: QdrantServerIndex(client, "chunks")
        client.close()


# --- congruence: edge == server == brute force --------------------------------------------

USERS = [f"user:u{i}" for i in range(8)]
GROUPS = [f"group:g{i}" for i in range(5)]
SOURCES = ["wiki", "drive", "tickets"]


def _random_scenario(n: int, seed: int) -> tuple[list[IndexPoint], list[Acl], np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM))
    points: list[IndexPoint] = []
    acls: list[Acl] = []
    for i in range(n):
        allow = [str(p) for p in rng.choice(USERS + GROUPS, size=rng.integers(0, 3), replace=False)]
        deny = [str(p) for p in rng.choice(USERS + GROUPS, size=rng.integers(0, 2), replace=False)]
        acl = Acl.of(allow, deny=deny, public=bool(rng.random() < 0.2))
        source = SOURCES[int(rng.integers(0, len(SOURCES)))]
        acls.append(acl)
        points.append(
            point(
                vectors[i].tolist(),
                payload(
                    f"doc-{i // 3}",
                    ordinal=i % 3,
                    source=source,
                    allow=acl.allow_tokens(),
                    deny=acl.deny,
                ),
            )
        )
    return points, acls, vectors


def _reference(
    points: list[IndexPoint],
    acls: list[Acl],
    vectors: np.ndarray,
    query: np.ndarray,
    access: AccessFilter,
    limit: int,
) -> list[tuple[str, float]]:
    """Top-``limit`` by cosine over the points the ACL grants, computed in Python."""
    normed = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    scores = normed @ (query / np.linalg.norm(query))
    admitted = [
        i
        for i, (p, acl) in enumerate(zip(points, acls, strict=True))
        if acl.grants(access.principals)
        and (access.sources is None or p.payload.source in access.sources)
    ]
    admitted.sort(key=lambda i: -scores[i])
    return [(points[i].id, float(scores[i])) for i in admitted[:limit]]


PRINCIPAL_SETS = [
    AccessFilter(principals=frozenset()),
    AccessFilter(principals=frozenset({"user:u1"})),
    AccessFilter(principals=frozenset({"user:u2", "group:g1"})),
    AccessFilter(principals=frozenset({"user:u3", "group:g0", "group:g2", "group:g4"})),
    AccessFilter(principals=frozenset({"group:unknown"})),
    AccessFilter(principals=frozenset({"user:u5", "group:g3"}), sources=frozenset({"wiki"})),
    AccessFilter(principals=frozenset(USERS + GROUPS)),
]


def test_edge_and_server_agree_with_a_brute_force_reference(tmp_path: Path) -> None:
    points, acls, vectors = _random_scenario(400, seed=20240611)
    queries = np.random.default_rng(7).standard_normal((5, DIM))
    edge = EdgeVectorIndex(tmp_path / "edge")
    client = QdrantClient(":memory:")
    server = QdrantServerIndex(client)
    indexes: list[VectorIndex] = [edge, server]
    try:
        for idx in indexes:
            idx.ensure(IDENTITY)
            idx.upsert(points)
        for access in PRINCIPAL_SETS:
            expected_count = sum(
                1
                for p, acl in zip(points, acls, strict=True)
                if acl.grants(access.principals)
                and (access.sources is None or p.payload.source in access.sources)
            )
            assert edge.count(access) == server.count(access) == expected_count
            for q in queries:
                want = _reference(points, acls, vectors, q, access, limit=10)
                for idx in indexes:
                    got = idx.search(q.tolist(), access, 10)
                    assert [h.id for h in got] == [i for i, _ in want], (type(idx), access)
                    for h, (_, score) in zip(got, want, strict=True):
                        assert h.score == pytest.approx(score, abs=1e-5)
    finally:
        edge.close()
        server.close()
        client.close()


# --- edge: one owner, no raw engine errors ------------------------------------------------


def test_a_second_edge_index_in_the_same_process_is_locked_out(tmp_path: Path) -> None:
    path = tmp_path / "index"
    first = EdgeVectorIndex(path)
    first.ensure(IDENTITY)
    with pytest.raises(IndexLockedError, match=r"owned by another process .*context-server serve"):
        EdgeVectorIndex(path)
    first.close()
    # Once the owner closes, the index opens again.
    second = EdgeVectorIndex(path)
    second.ensure(IDENTITY)
    second.close()


def test_a_fresh_path_is_locked_before_ensure(tmp_path: Path) -> None:
    path = tmp_path / "index"
    first = EdgeVectorIndex(path)
    with pytest.raises(IndexLockedError):
        EdgeVectorIndex(path)
    first.close()


_TRY_OPEN = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from indexing.errors import IndexLockedError
    from indexing.qdrant_edge import EdgeVectorIndex
    try:
        EdgeVectorIndex(Path(sys.argv[1]))
    except IndexLockedError as e:
        print("locked:", e)
    else:
        print("opened")
    """
)


def _open_in_subprocess(path: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-c", _TRY_OPEN, str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip()


def test_another_process_is_locked_out(tmp_path: Path) -> None:
    path = tmp_path / "index"
    owner = EdgeVectorIndex(path)
    owner.ensure(IDENTITY)
    try:
        out = _open_in_subprocess(path)
        assert out.startswith("locked:"), out
        assert str(path) in out
        assert "is `context-server serve` running?" in out
    finally:
        owner.close()
    assert _open_in_subprocess(path) == "opened"


def test_the_engines_own_lock_is_mapped_too(tmp_path: Path) -> None:
    path = tmp_path / "index"
    with EdgeVectorIndex(path) as idx:
        idx.ensure(IDENTITY)
    # Someone holds the shard's WAL without our lock file (e.g. an older version, a tool).
    raw = qe.EdgeShard.load(str(path / "shard"))
    try:
        with pytest.raises(IndexLockedError, match="owned by another process"):
            EdgeVectorIndex(path)
    finally:
        raw.close()


def test_a_damaged_shard_is_reported_not_leaked(tmp_path: Path) -> None:
    path = tmp_path / "index"
    with EdgeVectorIndex(path) as idx:
        idx.ensure(IDENTITY)
    (path / "shard" / "edge_config.json").write_text("garbage")
    with pytest.raises(IndexingError, match=r"delete .* and re-index") as raised:
        EdgeVectorIndex(path)
    assert type(raised.value) is IndexingError
    # The failed open released the lock: repairing and reopening works in this process.
    (path / "shard" / "edge_config.json").unlink()
    EdgeVectorIndex(path).close()


def test_a_damaged_identity_record_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "index"
    with EdgeVectorIndex(path) as idx:
        idx.ensure(IDENTITY)
    (path / "identity.json").write_text("{not json")
    with EdgeVectorIndex(path) as idx, pytest.raises(IndexingError, match="not a valid embedder"):
        idx.ensure(IDENTITY)


def test_an_interrupted_ensure_is_finished_on_the_next_one(tmp_path: Path) -> None:
    path = tmp_path / "index"
    with EdgeVectorIndex(path) as idx:
        idx.ensure(IDENTITY)
    (path / "identity.json").unlink()  # as if we crashed before recording the identity
    with EdgeVectorIndex(path) as idx:
        idx.ensure(IDENTITY)
        idx.upsert([point(unit(0), payload())])
        assert idx.count() == 1
    assert (path / "identity.json").exists()


def test_an_unrecorded_index_with_data_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "index"
    with EdgeVectorIndex(path) as idx:
        idx.ensure(IDENTITY)
        idx.upsert([point(unit(0), payload())])
    (path / "identity.json").unlink()
    with EdgeVectorIndex(path) as idx, pytest.raises(IndexingError, match="no embedder"):
        idx.ensure(IDENTITY)


def test_edge_operations_before_ensure_say_so(tmp_path: Path) -> None:
    with EdgeVectorIndex(tmp_path / "index") as idx, pytest.raises(IndexingError, match="ensure"):
        idx.count()


def test_edge_rejects_a_vector_of_the_wrong_dimension(tmp_path: Path) -> None:
    with EdgeVectorIndex(tmp_path / "index") as idx:
        idx.ensure(IDENTITY)
        with pytest.raises(ValueError, match="dimension"):
            idx.upsert([point([1.0, 0.0], payload())])


def test_edge_close_is_idempotent_and_final(tmp_path: Path) -> None:
    idx = EdgeVectorIndex(tmp_path / "index")
    idx.ensure(IDENTITY)
    idx.close()
    idx.close()
    with pytest.raises(IndexingError, match="closed"):
        idx.count()


def test_edge_search_after_optimize_still_filters(tmp_path: Path) -> None:
    with EdgeVectorIndex(tmp_path / "index") as idx:
        idx.ensure(IDENTITY)
        pts = [point(unit(i % DIM), payload(f"d{i}", allow=("group:eng",))) for i in range(50)]
        pub = point(unit(0), payload("pub", allow=(PUBLIC,)))
        idx.upsert([*pts, pub])
        idx.optimize()
        hits = idx.search(unit(0), AccessFilter(principals=frozenset()), 10)
        assert [h.id for h in hits] == [pub.id]


def test_edge_ensure_creates_the_keyword_indexes_before_any_data(tmp_path: Path) -> None:
    path = tmp_path / "index"
    with EdgeVectorIndex(path) as idx:
        idx.ensure(IDENTITY)
    raw = qe.EdgeShard.load(str(path / "shard"))
    try:
        assert raw.info().points_count == 0
        schema = raw.info().payload_schema
        assert set(KEYWORD_FIELDS) <= set(schema)
        assert all(schema[f].data_type == qe.PayloadSchemaType.Keyword for f in KEYWORD_FIELDS)
    finally:
        raw.close()


def test_edge_hnsw_branch_of_the_planner_filters_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small indexes always take the exact branch; force the other one.
    monkeypatch.setattr(
        "indexing.qdrant_edge.plan_search",
        lambda admitted, total, limit: SearchPlan(exact=False, hnsw_ef=max(16, limit)),
    )
    points, acls, vectors = _random_scenario(300, seed=5)
    with EdgeVectorIndex(tmp_path / "index") as idx:
        idx.ensure(IDENTITY)
        idx.upsert(points)
        idx.optimize()
        for access in PRINCIPAL_SETS:
            q = vectors[0]
            want = _reference(points, acls, vectors, q, access, limit=5)
            got = idx.search(q.tolist(), access, 5)
            # HNSW is approximate: demand only that nothing forbidden comes back.
            assert {h.id for h in got} <= {
                p.id for p, a in zip(points, acls, strict=True) if a.grants(access.principals)
            }
            assert len(got) == len(want)


# --- the planner ----------------------------------------------------------------------------


def test_the_planner_scans_small_filters_and_widens_ef_for_sparse_ones() -> None:
    limit = EXACT_SEARCH_MAX_POINTS
    assert plan_search(0, 1_000_000, 10) == SearchPlan(exact=True)
    assert plan_search(limit, 1_000_000, 10) == SearchPlan(exact=True)
    sparse = plan_search(limit + 1, 1_000_000, 10)
    dense = plan_search(900_000, 1_000_000, 10)
    assert not sparse.exact and not dense.exact
    assert sparse.hnsw_ef is not None and dense.hnsw_ef is not None
    assert sparse.hnsw_ef >= dense.hnsw_ef >= HNSW_EF
    # ef never below the number of results asked for.
    assert plan_search(900_000, 1_000_000, 5000).hnsw_ef == 5000
    # HNSW walks the int8 copies and rescores more than the limit on the originals; an
    # exact scan reads the originals only.
    assert sparse.rescore_oversampling is not None and sparse.rescore_oversampling >= 2
    assert plan_search(limit, 1_000_000, 10).rescore_oversampling is None


def _clustered_scenario(n: int, seed: int) -> tuple[list[IndexPoint], list[Acl], np.ndarray]:
    """Clustered vectors; each point readable by one of 20 groups, correlated with its
    cluster, so a filter's admitted points are a minority near most queries."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, DIM))
    cluster = rng.integers(0, 40, n)
    vectors = centres[cluster] + 0.35 * rng.standard_normal((n, DIM))
    group = np.where(rng.random(n) < 0.7, cluster % 20, rng.integers(0, 20, n))
    points, acls = [], []
    for i in range(n):
        acl = Acl.of([f"group:g{group[i]}"])
        acls.append(acl)
        points.append(point(vectors[i].tolist(), payload(f"doc-{i}", allow=acl.allow_tokens())))
    return points, acls, vectors


def test_a_selective_filter_over_an_optimized_index_returns_the_exact_top_k(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The 1M-point situation in miniature: a threshold low enough that filters admitting
    # 1-5 % of 4000 points plan HNSW, over a graph with per-group links.
    monkeypatch.setattr("indexing.index.EXACT_SEARCH_MAX_POINTS", 30)
    monkeypatch.setattr("indexing.index.HNSW_LINKED_MIN_POINTS", 20)
    plans: list[SearchPlan] = []

    def spy(admitted: int, total: int, limit: int) -> SearchPlan:
        plans.append(plan_search(admitted, total, limit))
        return plans[-1]

    monkeypatch.setattr("indexing.qdrant_edge.plan_search", spy)
    points, acls, vectors = _clustered_scenario(4000, seed=3)
    queries = np.random.default_rng(4).standard_normal((10, DIM)) * 2
    with EdgeVectorIndex(tmp_path / "index") as idx:
        idx.ensure(IDENTITY)
        idx.upsert(points)
        idx.optimize()
        for groups in (["group:g1"], ["group:g2", "group:g3"], [f"group:g{i}" for i in range(10)]):
            access = AccessFilter(principals=frozenset(groups))
            for q in queries:
                want = _reference(points, acls, vectors, q, access, limit=10)
                got = idx.search(q.tolist(), access, 10)
                assert [h.id for h in got] == [i for i, _ in want], groups
    assert plans and all(not p.exact for p in plans)


def test_edge_and_server_build_the_same_graph(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both create their HNSW graph and its int8 vector copies with the planner's settings
    (local mode ignores them, so the server's are checked as sent) and filter-aware links
    for the ACL only."""
    with EdgeVectorIndex(tmp_path / "index") as idx:
        idx.ensure(IDENTITY)
    edge = json.loads((tmp_path / "index" / "shard" / "edge_config.json").read_text())
    client = QdrantClient(":memory:")
    sent: dict[str, object] = {}
    create = client.create_collection

    def spy(*args: Any, **kwargs: Any) -> bool:
        sent.update(kwargs)
        return create(*args, **kwargs)

    monkeypatch.setattr(client, "create_collection", spy)
    QdrantServerIndex(client).ensure(IDENTITY)
    client.close()
    hnsw = sent["hnsw_config"]
    assert isinstance(hnsw, HnswConfigDiff)
    sent_hnsw = {k: v for k, v in hnsw.model_dump().items() if v is not None}
    assert set(sent_hnsw) >= {"m", "ef_construct", "full_scan_threshold", "payload_m"}
    assert sent_hnsw.items() <= edge["hnsw_config"].items()
    assert sent_hnsw["payload_m"] == HNSW_PAYLOAD_M
    quantization = sent["quantization_config"]
    assert isinstance(quantization, ScalarQuantization)
    assert edge["quantization_config"] == quantization.model_dump(mode="json", exclude_none=True)
    raw = qe.EdgeShard.load(str(tmp_path / "index" / "shard"))
    try:
        schema = raw.info().payload_schema
    finally:
        raw.close()
    linked = {name for name, info in schema.items() if getattr(info.params, "enable_hnsw", None)}
    assert linked == set(HNSW_LINKED_FIELDS)


# --- server: reachability -----------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_an_unreachable_server_is_reported_clearly() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    index = QdrantServerIndex.from_url(url, timeout=2)
    try:
        with pytest.raises(IndexUnavailableError, match=r"cannot be reached") as raised:
            index.ensure(IDENTITY)
        assert url in str(raised.value)
        with pytest.raises(IndexUnavailableError):
            index.count()
    finally:
        index.close()


def test_a_foreign_collection_holding_data_is_refused() -> None:
    from qdrant_client import models as m

    client = QdrantClient(":memory:")
    client.create_collection(
        "chunks", vectors_config=m.VectorParams(size=DIM, distance=m.Distance.COSINE)
    )
    client.upsert("chunks", [m.PointStruct(id=1, vector=unit(0), payload={})])
    with pytest.raises(IndexingError, match="not created by context-server"):
        QdrantServerIndex(client).ensure(IDENTITY)
    client.close()


def test_an_empty_foreign_collection_is_adopted() -> None:
    from qdrant_client import models as m

    client = QdrantClient(":memory:")
    client.create_collection(
        "chunks",
        vectors_config=m.VectorParams(size=DIM, distance=m.Distance.COSINE),
        sparse_vectors_config={"keyword": m.SparseVectorParams(modifier=m.Modifier.IDF)},
    )
    QdrantServerIndex(client).ensure(IDENTITY)
    metadata = client.get_collection("chunks").config.metadata
    assert metadata == {
        "embedder": {
            "name": IDENTITY.name,
            "backend": "test",
            "dim": DIM,
            "keyword": IDENTITY.keyword,
        }
    }
    client.close()


def test_an_empty_foreign_collection_without_keyword_vectors_is_refused() -> None:
    from qdrant_client import models as m

    client = QdrantClient(":memory:")
    client.create_collection(
        "chunks", vectors_config=m.VectorParams(size=DIM, distance=m.Distance.COSINE)
    )
    with pytest.raises(IndexingError, match="not shaped for dense"):
        QdrantServerIndex(client).ensure(IDENTITY)
    client.close()


# --- open_index ---------------------------------------------------------------------------


def test_open_index_picks_the_backend(tmp_path: Path) -> None:
    edge = open_index(path=tmp_path / "index", url=None)
    assert isinstance(edge, EdgeVectorIndex)
    edge.close()
    url = f"https://127.0.0.1:{_closed_port()}"  # https: qdrant-client warns about a key over http
    server = open_index(path=tmp_path / "ignored", url=url, api_key="k")
    assert isinstance(server, QdrantServerIndex)
    server.close()
    with pytest.raises(ValueError, match="path"):
        open_index(path=None, url=None)


WORDS = [f"term{i}" for i in range(60)]  # many terms, varied tf: few score ties


def test_edge_and_server_agree_on_keyword_and_hybrid_search(tmp_path: Path) -> None:
    rng = np.random.default_rng(99)
    points, acls, _vectors = _random_scenario(300, seed=5)
    keyworded = [
        IndexPoint(
            id=p.id,
            vector=p.vector,
            payload=p.payload,
            sparse=KEYWORDS.document(" ".join(rng.choice(WORDS, size=int(rng.integers(3, 12))))),
        )
        for p in points
    ]
    edge = EdgeVectorIndex(tmp_path / "edge")
    client = QdrantClient(":memory:")
    server = QdrantServerIndex(client)
    try:
        for idx in (edge, server):
            idx.ensure(IDENTITY)
            idx.upsert(keyworded)
        for access in PRINCIPAL_SETS:
            for words in (["term1"], ["term2", "term3"], ["term4", "term50", "term33"]):
                sparse = KEYWORDS.query(" ".join(words))
                dense = rng.standard_normal(DIM).tolist()
                for vector in (None, dense):
                    e = edge.search(vector, access, 10, sparse=sparse)
                    s = server.search(vector, access, 10, sparse=sparse)
                    allowed = {
                        p.id
                        for p, acl in zip(points, acls, strict=True)
                        if acl.grants(access.principals)
                        and (access.sources is None or p.payload.source in access.sources)
                    }
                    assert {h.id for h in e} <= allowed and {h.id for h in s} <= allowed
                    if vector is None:
                        # Keyword alone: the same scores; ids equal except among ties at the cut.
                        assert [h.score for h in e] == pytest.approx([h.score for h in s], rel=1e-4)
                        cut = e[-1].score + 1e-6 if e else 0.0
                        assert {h.id for h in e if h.score > cut} == {
                            h.id for h in s if h.score > cut
                        }
                    else:
                        # Fused: keyword score ties may be ranked apart differently, which
                        # moves reciprocal ranks a little; the results must still coincide.
                        assert len(e) == len(s)
                        assert len({h.id for h in e} & {h.id for h in s}) >= 0.8 * len(e)
    finally:
        edge.close()
        client.close()
