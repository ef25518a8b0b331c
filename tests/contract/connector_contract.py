"""What every connector must do, as a mixin each connector's test class inherits.

A subclass provides a small live "source" it can mutate, through these methods:

    connector()                 a connector over the current source state
    add(name, text)             create a document
    change(name, text)          change a document's content
    remove(name)                delete a document
    restrict(name, principal)   change only who may read a document (returns a new connector
                                when the ACL lives in the connector's config)
    break_(name)                make one document unreadable at the source
    external_id(name)           the id the connector gives that document
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from connectors.base import Acl, Change, Checkpoint, Delete, Failure, SourceDocument, Upsert


def run(connector: Any, since: Checkpoint | None) -> tuple[list[Change], Checkpoint]:
    changes: list[Change] = []
    gen: Generator[Change, None, Checkpoint] = connector.sync(since)
    while True:
        try:
            changes.append(next(gen))
        except StopIteration as end:
            return changes, end.value


def upserts(changes: list[Change]) -> dict[str, SourceDocument]:
    return {c.document.external_id: c.document for c in changes if isinstance(c, Upsert)}


def deletes(changes: list[Change]) -> set[str]:
    return {c.external_id for c in changes if isinstance(c, Delete)}


def failures(changes: list[Change]) -> dict[str, Failure]:
    return {c.external_id: c for c in changes if isinstance(c, Failure)}


class ConnectorContract:
    def connector(self) -> Any:
        raise NotImplementedError

    def external_id(self, name: str) -> str:
        raise NotImplementedError

    def add(self, name: str, text: str) -> None:
        raise NotImplementedError

    def change(self, name: str, text: str) -> None:
        raise NotImplementedError

    def remove(self, name: str) -> None:
        raise NotImplementedError

    def restrict(self, name: str, principal: str) -> Any:
        raise NotImplementedError

    def break_(self, name: str) -> None:
        raise NotImplementedError

    def seed(self) -> None:
        self.add("a", "alpha document text")
        self.add("b", "bravo document text")
        self.add("c", "charlie document text")

    def test_full_sync_lists_every_document_with_an_acl(self) -> None:
        self.seed()
        changes, checkpoint = run(self.connector(), None)
        docs = upserts(changes)
        assert len(docs) == 3
        assert not deletes(changes) and not failures(changes)
        for doc in docs.values():
            assert isinstance(doc.acl, Acl)
            assert doc.content_hash
            assert doc.read()
        restored = type(checkpoint).model_validate_json(checkpoint.model_dump_json())
        assert restored == checkpoint
        assert {r.external_id for r in self.connector().list_ids()} == set(docs)

    def test_resync_without_changes_is_idempotent(self) -> None:
        self.seed()
        first, checkpoint = run(self.connector(), None)
        again, _ = run(self.connector(), checkpoint)
        before = {k: (d.content_hash, d.acl) for k, d in upserts(first).items()}
        after = {k: (d.content_hash, d.acl) for k, d in upserts(again).items()}
        assert all(before[k] == v for k, v in after.items())
        assert not deletes(again) and not failures(again)

    def test_changed_content_changes_the_hash(self) -> None:
        self.seed()
        first, checkpoint = run(self.connector(), None)
        self.change("b", "bravo document text, now longer and different")
        again, _ = run(self.connector(), checkpoint)
        b = self.external_id("b")
        assert upserts(again)[b].content_hash != upserts(first)[b].content_hash
        assert b"different" in upserts(again)[b].read()

    def test_deletion_is_reported(self) -> None:
        self.seed()
        first, checkpoint = run(self.connector(), None)
        self.remove("c")
        again, _ = run(self.connector(), checkpoint)
        c = self.external_id("c")
        assert c in upserts(first)
        assert deletes(again) == {c}
        assert c not in {r.external_id for r in self.connector().list_ids()}

    def test_acl_only_change_keeps_the_hash(self) -> None:
        self.seed()
        first, checkpoint = run(self.connector(), None)
        connector = self.restrict("a", "user:zoe")
        again, _ = run(connector, checkpoint)
        key = self.external_id("a")
        assert upserts(again)[key].content_hash == upserts(first)[key].content_hash
        assert upserts(again)[key].acl != upserts(first)[key].acl
        assert upserts(again)[key].acl.grants({"user:zoe"})

    def test_resume_after_interruption_loses_nothing(self) -> None:
        self.seed()
        _, checkpoint = run(self.connector(), None)
        self.add("d", "delta document text")
        self.remove("a")
        gen = self.connector().sync(checkpoint)
        next(gen)
        gen.close()  # the process died: the checkpoint was never advanced
        again, _ = run(self.connector(), checkpoint)
        assert self.external_id("d") in upserts(again)
        assert self.external_id("a") in deletes(again)

    def test_one_bad_document_does_not_stop_the_sync(self) -> None:
        self.seed()
        self.break_("b")
        changes, _ = run(self.connector(), None)
        bad = failures(changes)
        assert len(bad) == 1
        (failure,) = bad.values()
        assert failure.reason and failure.external_id == self.external_id("b")
        assert len(upserts(changes)) == 2
