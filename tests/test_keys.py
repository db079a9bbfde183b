"""Cache and input keys: the fast path for plain arguments writes the same bytes as the canonical serializer."""

from hypothesis import given, settings
from hypothesis import strategies as st

from gflow.flows._keys import _plain_json
from gflow.serialization import canonical_json, to_jsonable

plain = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1), st.text())


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.text(), plain, max_size=5))
def test_plain_arguments_encode_exactly_as_the_canonical_serializer(args):
    assert _plain_json(args) == canonical_json({k: to_jsonable(v, {}, False, "") for k, v in args.items()})


@given(st.dictionaries(st.text(), st.one_of(st.floats(), st.lists(st.integers()), st.integers(min_value=2**53)),
                       min_size=1, max_size=3))
def test_other_arguments_take_the_serializer(args):
    assert _plain_json(args) is None
