"""Property tests (hypothesis): validation accepts only what it can use, and canonical serialization round-trips."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from gflow.objects import Design, Molecule, Protein, Score
from gflow.objects._smiles import check_smiles_syntax
from gflow.objects.fasta import read_fasta, write_fasta
from gflow.objects.protein import ALLOWED_RESIDUES
from gflow.serialization import decode, encode

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
residues = st.text(alphabet=ALLOWED_RESIDUES + ALLOWED_RESIDUES.lower(), min_size=1, max_size=80)
SMILES_TOKENS = ["C", "c", "N", "n", "O", "o", "S", "Cl", "Br", "F", "1", "2", "%10", "%(123)", "(", ")", "=", "#",
                 "-", ".", "[NH4+]", "[C@@H]", "[13CH3]", "[O-]", "[Pt]", "->", "<-", "/", "\\", ":", "*", "\u00b2"]
smiles_like = st.lists(st.sampled_from(SMILES_TOKENS), min_size=1, max_size=10).map("".join)


@SETTINGS
@given(residues, st.sampled_from(["", "*"]))
def test_protein_round_trips_canonically(sequence: str, stop: str) -> None:
    p = Protein(sequence=sequence + stop, name="p")
    assert p.sequence == sequence.upper()
    back = decode(encode(p).data)
    assert back == p and encode(back).data == encode(p).data


@SETTINGS
@given(st.text(min_size=1, max_size=40))
def test_protein_never_changes_length_through_case_mapping(text: str) -> None:
    try:
        p = Protein(sequence=text)
    except ValidationError:
        return
    assert p.sequence.isascii()
    kept = "".join(text.split())
    assert len(p.sequence) == len(kept) - kept.endswith("*")  # no 'ß' -> 'SS' style growth


@SETTINGS
@given(st.lists(st.tuples(st.from_regex(r"[A-Za-z0-9_|]{1,12}", fullmatch=True), residues), min_size=1,
                max_size=8, unique_by=lambda t: t[0]))
def test_fasta_round_trip(records: list[tuple[str, str]]) -> None:
    proteins = [Protein(sequence=seq, name=name) for name, seq in records]
    assert read_fasta(write_fasta(proteins, width=7)) == proteins


@SETTINGS
@given(smiles_like)
def test_syntax_check_agrees_with_rdkit_on_what_rdkit_parses(smiles: str) -> None:
    chem = pytest.importorskip("rdkit.Chem")
    from rdkit import rdBase

    with rdBase.BlockLogs():
        rdkit_ok = chem.MolFromSmiles(smiles, sanitize=False) is not None
    try:
        check_smiles_syntax(smiles)
        ours = True
    except ValueError:
        ours = False
    if not smiles.isascii():  # refused on purpose; RDKit drops some trailing non-ASCII characters ('C\u00b2' -> C)
        assert not ours
        return
    assert ours == rdkit_ok, smiles


@SETTINGS
@given(smiles_like)
def test_molecule_accepts_or_refuses_with_a_validation_error_and_round_trips(smiles: str) -> None:
    try:
        m = Molecule(smiles=smiles)
    except ValidationError as exc:
        assert exc.errors()[0]["loc"] == ("smiles",)
        return
    back = decode(encode(m).data)
    assert back == m and back.content_id == m.content_id
    assert Molecule(smiles=m.smiles) == m  # the canonical form is a fixed point


@SETTINGS
@given(residues, st.floats(allow_nan=False, allow_infinity=False, width=64), st.booleans())
def test_design_with_scores_round_trips(sequence: str, value: float, higher: bool) -> None:
    parent = Design(protein=Protein(sequence=sequence))
    child = parent.derive(protein=Protein(sequence=sequence[::-1])).with_score(
        Score(name="s", value=value, higher_is_better=higher))
    back = decode(encode(child).data)
    assert back == child and back.parents == (parent.content_id,)
