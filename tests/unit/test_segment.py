from hypothesis import given
from hypothesis import strategies as st

from tcpstack import wire
from tcpstack.core.segment import Flags, Options, Segment, flags_str, parse_flags

u32 = st.integers(0, 0xFFFF_FFFF)
options = st.builds(
    Options,
    mss=st.none() | st.integers(0, 0xFFFF),
    wscale=st.none() | st.integers(0, 14),
    sack_permitted=st.booleans(),
    timestamps=st.none() | st.tuples(u32, u32),
    sack_blocks=st.lists(st.tuples(u32, u32), max_size=3).map(tuple),
)


@given(options)
def test_encoded_length_matches_the_wire_codec(opts: Options) -> None:
    try:
        encoded = wire._encode_options(opts)
    except ValueError:
        return  # more than 40 bytes: the codec refuses, and so do senders
    assert opts.encoded_length() == len(encoded)


def test_flags_round_trip_in_tcpdump_letters() -> None:
    for value in range(256):
        f = Flags(value)
        assert parse_flags(flags_str(f)) == f


def test_segment_length_counts_syn_and_fin() -> None:
    s = Segment(1, 2, 0xFFFF_FFFF, flags=Flags.SYN | Flags.FIN, payload=b"ab")
    assert s.seg_len == 4 and s.end_seq == 3
