"""Debouncer: a lineage is due once it has been quiet for `settle` seconds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from danesync.debounce import LINK_KINDS, plan_links_done
from danesync.watcher import Debouncer


class TestDebouncer:
    """touch / due / next_deadline with the caller's clock."""

    def test_nothing_pending(self) -> None:
        debouncer = Debouncer(0.25)
        assert debouncer.next_deadline() is None
        assert debouncer.due(100.0) == []
        assert len(debouncer) == 0

    def test_due_after_settle(self) -> None:
        debouncer = Debouncer(0.25)
        debouncer.touch("a", 10.0)
        assert debouncer.next_deadline() == 10.25
        assert debouncer.due(10.2) == []
        assert debouncer.due(10.25) == ["a"]
        assert debouncer.due(11.0) == []
        assert debouncer.next_deadline() is None

    def test_touch_postpones(self) -> None:
        debouncer = Debouncer(0.25)
        debouncer.touch("a", 10.0)
        debouncer.touch("a", 10.2)
        assert debouncer.due(10.3) == []
        assert debouncer.next_deadline() == pytest.approx(10.45)
        assert debouncer.due(10.45) == ["a"]

    def test_each_name_separately(self) -> None:
        debouncer = Debouncer(1.0)
        debouncer.touch("b", 5.0)
        debouncer.touch("a", 5.5)
        debouncer.touch("c", 7.0)
        assert debouncer.pending == {"a", "b", "c"}
        assert debouncer.next_deadline() == 6.0
        assert debouncer.due(6.6) == ["b", "a"]
        assert debouncer.pending == {"c"}
        assert debouncer.next_deadline() == 8.0

    def test_same_deadline_sorted_by_name(self) -> None:
        debouncer = Debouncer(1.0)
        for name in ("c", "a", "b"):
            debouncer.touch(name, 1.0)
        assert debouncer.due(2.0) == ["a", "b", "c"]

    def test_zero_settle_is_due_at_once(self) -> None:
        debouncer = Debouncer(0.0)
        debouncer.touch("a", 3.0)
        assert debouncer.due(3.0) == ["a"]

    def test_discard_and_clear(self) -> None:
        debouncer = Debouncer(1.0)
        debouncer.touch("a", 0.0)
        debouncer.touch("b", 0.0)
        debouncer.discard("a")
        debouncer.discard("missing")
        assert debouncer.pending == {"b"}
        debouncer.clear()
        assert debouncer.next_deadline() is None

    def test_negative_settle(self) -> None:
        with pytest.raises(ValueError, match="negative"):
            Debouncer(-1)

    @given(
        settle=st.floats(min_value=0, max_value=10),
        touches=st.lists(
            st.tuples(st.sampled_from("abcd"), st.floats(min_value=0, max_value=100)), max_size=30
        ),
        now=st.floats(min_value=0, max_value=120),
    )
    def test_due_is_exactly_the_quiet_names(
        self, settle: float, touches: list[tuple[str, float]], now: float
    ) -> None:
        debouncer = Debouncer(settle)
        last: dict[str, float] = {}
        for name, when in sorted(touches, key=lambda t: t[1]):
            debouncer.touch(name, when)
            last[name] = when
        expected = {name for name, when in last.items() if when + settle <= now}
        deadline = debouncer.next_deadline()
        due = debouncer.due(now)
        assert set(due) == expected
        assert len(due) == len(expected)
        if last:
            assert deadline == min(when + settle for when in last.values())
        assert debouncer.pending == set(last) - expected


class TestDone:
    """A lineage its writer says is finished is due at once; settle is the fallback."""

    def test_done_is_due_at_once(self) -> None:
        debouncer = Debouncer(0.25)
        debouncer.touch("a", 10.0, done=True)
        assert debouncer.next_deadline() == 10.0
        assert debouncer.due(10.0) == ["a"]

    def test_the_last_touch_decides(self) -> None:
        debouncer = Debouncer(0.25)
        debouncer.touch("a", 10.0, done=True)
        debouncer.touch("a", 10.01)  # certbot started again before the loop read it
        assert debouncer.due(10.01) == []
        assert debouncer.due(10.26) == ["a"]
        debouncer.touch("b", 11.0)
        debouncer.touch("b", 11.02, done=True)
        assert debouncer.due(11.02) == ["b"]

    def test_retry_reads_an_early_name_once_more_after_settle(self) -> None:
        debouncer = Debouncer(0.25)
        debouncer.touch("early", 10.0, done=True)
        debouncer.touch("settled", 9.7)
        assert debouncer.due(10.0) == ["settled", "early"]
        assert debouncer.retry({"early", "settled"}, 10.1) == {"early"}
        assert debouncer.due(10.3) == []
        assert debouncer.due(10.35) == ["early"]
        # Read after settle: a failure now is the lineage's own, no more retries.
        assert debouncer.retry({"early"}, 10.4) == set()
        assert debouncer.next_deadline() is None

    def test_retry_after_a_good_pass_does_nothing(self) -> None:
        debouncer = Debouncer(0.25)
        debouncer.touch("a", 1.0, done=True)
        assert debouncer.due(1.0) == ["a"]
        assert debouncer.due(2.0) == []  # a later pass over other names
        assert debouncer.retry({"a"}, 2.0) == set()


def _links(version: int, **override: int | None) -> dict[str, str | None]:
    targets: dict[str, str | None] = {}
    for kind in LINK_KINDS:
        number = override.get(kind, version)
        targets[kind] = None if number is None else f"../../archive/x/{kind}{number}.pem"
    return targets


class TestPlanLinksDone:
    def test_agreeing_links_without_previous(self) -> None:
        assert plan_links_done(_links(3), previous=False)

    def test_previous_links_mean_certbot_is_still_at_work(self) -> None:
        assert not plan_links_done(_links(3), previous=True)

    def test_mixed_versions(self) -> None:
        assert not plan_links_done(_links(3, cert=4), previous=False)
        assert not plan_links_done(_links(3, fullchain=2), previous=False)

    def test_missing_link(self) -> None:
        assert not plan_links_done(_links(3, privkey=None), previous=False)

    def test_wrong_kind_or_name(self) -> None:
        targets = _links(3)
        targets["cert"] = "../../archive/x/chain3.pem"
        assert not plan_links_done(targets, previous=False)
        targets["cert"] = "../../archive/x/cert3.pem.tmp"
        assert not plan_links_done(targets, previous=False)

    def test_different_directories(self) -> None:
        targets = _links(3)
        targets["privkey"] = "../../archive/y/privkey3.pem"
        assert not plan_links_done(targets, previous=False)
