"""The agent's kept captures: names, and the folder's bound (pure)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from mailpath.agent.daemon.captures import doomed, file_name


def test_file_names_sort_by_round_and_are_safe():
    assert file_name(12, "mx.example.com") == "round-000012-mx.example.com.pcapng"
    assert file_name(3, "../etc/passwd") == "round-000003-etc_passwd.pcapng"
    assert file_name(3, "2001:db8::1") == "round-000003-2001_db8_1.pcapng"
    assert file_name(9, "a") < file_name(10, "a")


files = st.dictionaries(
    st.integers(1, 999_999).map(lambda n: file_name(n, "t")), st.integers(0, 10_000), max_size=40
)


@given(files, st.integers(1, 50), st.integers(1024, 200_000))
def test_the_oldest_go_first_until_the_folder_is_within_its_bounds(sizes, keep, max_bytes):
    gone = doomed(sizes.items(), keep, max_bytes)
    left = sorted(set(sizes) - set(gone))
    assert gone == sorted(sizes)[: len(gone)]  # the oldest, in order
    if sizes:
        assert left and left[-1] == max(sizes)  # the newest stays
    if len(left) > 1:
        assert len(left) <= keep and sum(sizes[n] for n in left) <= max_bytes
    if gone:  # nothing removed past what the bounds asked for
        kept_one_more = [gone[-1], *left]
        assert len(kept_one_more) > keep or sum(sizes[n] for n in kept_one_more) > max_bytes
