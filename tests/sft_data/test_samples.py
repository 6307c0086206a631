"""Skip statistics of the SFT data."""

from __future__ import annotations

import json

from mrgrpo.sft_data import DataStats, SFTStream


def test_stats_object():
    st = DataStats()
    st.skip("a", "missing", "x")
    st.skip("a", "corrupt")
    st.skip("b", "missing")
    d = st.as_dict()
    assert d["skipped"] == 3 and d["skipped_missing"] == 2 and d["a/skipped_corrupt"] == 1
    st2 = DataStats()
    st2.load_state_dict(json.loads(json.dumps(st.state_dict())))
    assert st2.as_dict() == d
    assert isinstance(SFTStream, type)
