"""Molecule v2: RDKit canonical identity, the syntax check without RDKit, descriptors; checked on RDKit's own data."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import pytest
from pydantic import ValidationError

import gflow
from gflow.flows._keys import compute_key
from gflow.objects import Molecule, _deps
from gflow.objects import molecule as molecule_module
from gflow.objects._smiles import check_smiles_syntax
from gflow.serialization import decode, encode
from gflow.testing import run_flow

Chem = pytest.importorskip("rdkit.Chem")
from rdkit import RDConfig, rdBase  # noqa: E402
from rdkit.Chem import QED, Crippen, Lipinski, rdMolDescriptors  # noqa: E402

NCI = Path(RDConfig.RDDataDir) / "NCI"


def _nci_smiles() -> list[str]:
    return [line.split()[0] for line in (NCI / "first_5K.smi").read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def nci() -> list[str]:
    if not (NCI / "first_5K.smi").is_file():
        pytest.skip("this RDKit wheel ships no NCI sample")
    return _nci_smiles()


def test_identity_is_the_canonical_smiles() -> None:
    a, b = Molecule(smiles="OCC"), Molecule(smiles="CCO")
    assert a == b and a.content_id == b.content_id and hash(a) == hash(b)
    assert a.smiles == b.smiles == Chem.MolToSmiles(Chem.MolFromSmiles("OCC"))
    assert (a.given_smiles, b.given_smiles) == ("OCC", "CCO")
    assert "OCC" not in a.canonical_json()  # the spelling is not part of the data, so not of any key
    assert Molecule.model_validate(" OCC ") == a  # a bare string, as --param gives it


def test_same_cache_key_and_a_cache_hit_across_spellings(gflow_home: Path) -> None:
    calls: list[str] = []

    @gflow.task(cache=True)
    def weigh(m: Molecule) -> float:
        calls.append(m.smiles)
        return round(m.molecular_weight, 3)

    @gflow.flow
    def twice() -> list[float]:
        return [weigh(Molecule(smiles="OCC")).result(), weigh(Molecule(smiles="C(O)C")).result()]

    assert compute_key(weigh, {"m": Molecule(smiles="OCC")}) == compute_key(weigh, {"m": Molecule(smiles="CCO")})
    result = run_flow(twice)
    assert result.state is gflow.State.SUCCEEDED and result.value[0] == result.value[1]
    assert calls == ["CCO"]  # the second spelling was a cache hit


def test_round_trip_keeps_identity_not_spelling() -> None:
    m = Molecule(smiles="c1ccccc1O", name="phenol", metadata={"source": "test"})
    back = decode(encode(m).data)
    assert back == m and back.content_id == m.content_id
    assert back.given_smiles == back.smiles == m.smiles  # the spelling stays with the object that was given it


def test_nci_sample_canonical_forms_agree_with_rdkit_and_are_stable(nci: list[str]) -> None:
    block = rdBase.BlockLogs()
    checked = 0
    for smiles in nci[:1500]:
        mol = Chem.MolFromSmiles(smiles)
        if mol is None:
            with pytest.raises(ValidationError):
                Molecule(smiles=smiles)
            continue
        m = Molecule(smiles=smiles)
        assert Chem.MolToSmiles(Chem.MolFromSmiles(m.smiles)) == m.smiles  # a fixed point
        assert Chem.MolToInchiKey(Chem.MolFromSmiles(m.smiles)) == Chem.MolToInchiKey(mol)  # the same molecule
        assert Molecule(smiles=m.smiles) == m
        checked += 1
    del block
    assert checked > 1400


def test_syntax_check_accepts_every_smiles_rdkit_parses(nci: list[str]) -> None:
    block = rdBase.BlockLogs()
    for smiles in nci:
        if Chem.MolFromSmiles(smiles, sanitize=False) is not None:
            check_smiles_syntax(smiles)
    del block


def test_tpsa_matches_rdkit_reference_values(nci: list[str]) -> None:
    path = NCI / "first_5k.tpsa.csv"
    if not path.is_file():
        pytest.skip("no TPSA reference in this RDKit wheel")
    rows = [r for r in csv.reader(path.read_text().splitlines()) if r and not r[0].startswith("#")]
    compared = 0
    for smiles, tpsa in rows[:300]:
        try:
            m = Molecule(smiles=smiles)
        except ValidationError:
            continue
        assert m.tpsa == pytest.approx(float(tpsa), abs=0.01), smiles
        compared += 1
    assert compared > 250


def test_descriptors_are_rdkits_and_computed_once(nci: list[str]) -> None:
    for smiles in nci[:40]:
        try:
            m = Molecule(smiles=smiles)
        except ValidationError:
            continue
        mol = Chem.MolFromSmiles(m.smiles)
        d = m.descriptors()
        assert d is m.descriptors()
        assert d.molecular_weight == pytest.approx(Chem.Descriptors.MolWt(mol))
        assert d.logp == pytest.approx(Crippen.MolLogP(mol))
        assert (d.hbd, d.hba) == (Lipinski.NumHDonors(mol), Lipinski.NumHAcceptors(mol))
        assert d.tpsa == pytest.approx(rdMolDescriptors.CalcTPSA(mol))
        assert m.qed == pytest.approx(QED.qed(mol))
        assert d.lipinski_violations() == sum((d.molecular_weight > 500, d.logp > 5, d.hbd > 5, d.hba > 10))


@pytest.mark.parametrize("smiles", ["C%(100)CC%(100)", "N->[Pt]", "[Pt]<-N", "C(C)1CC1", "C1.C1", "C\\\\C=C/C",
                                    "[C@@H](F)(Cl)Br", "[13CH4]", "[Fe+2]", "C%10CC%(10)", "c1ccccc1"])
def test_syntax_check_accepts_what_rdkit_accepts(smiles: str) -> None:
    block = rdBase.BlockLogs()
    assert Chem.MolFromSmiles(smiles, sanitize=False) is not None
    del block
    check_smiles_syntax(smiles)


@pytest.mark.parametrize(("smiles", "message"), [
    ("C\u00b2CC\u00b2", "non-ASCII character"),
    ("C\u0661CC\u0661", "non-ASCII character"),  # Arabic-Indic digit one
    ("[C\u00b2]", "non-ASCII character"),
    ("C11", "closes on the atom that opened it"),
    ("CC11C", "closes on the atom that opened it"),
    ("C1C1", "duplicates a bond"),
    ("C(C.)C", "empty or dangling branch"),
    ("C%(1", "'%' must be followed by"),
])
def test_syntax_check_refuses(smiles: str, message: str) -> None:
    block = rdBase.BlockLogs()
    assert Chem.MolFromSmiles(smiles, sanitize=False) is None  # RDKit refuses them too
    del block
    with pytest.raises(ValueError, match=message):
        check_smiles_syntax(smiles)


def test_without_rdkit_only_syntax_is_checked_and_said_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(molecule_module, "_rdkit_chem", lambda: None)
    monkeypatch.setattr(_deps, "_warned", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = Molecule(smiles="OCC")
        b = Molecule(smiles="CCO")
        accepted = [Molecule(smiles=s).smiles for s in ("C%(100)CC%(100)", "N->[Pt]", "C(C)1CC1")]
    assert accepted == ["C%(100)CC%(100)", "N->[Pt]", "C(C)1CC1"]
    assert a != b and a.smiles == "OCC"  # no canonical form without RDKit
    messages = [str(w.message) for w in caught if "RDKit is not installed" in str(w.message)]
    assert len(messages) == 1 and "only syntax-checked" in messages[0]
    with pytest.raises(ValidationError, match="non-ASCII"):
        Molecule(smiles="C\u00b2CC\u00b2")
    assert Molecule(smiles="C(C)(C)(C)(C)C").smiles == "C(C)(C)(C)(C)C"  # valence is not checked


def test_smiles_file_errors_name_the_line() -> None:
    got = Molecule.from_smiles_file("# a comment\nCCO ethanol\n\nc1ccccc1 benzene\n")
    assert [(m.smiles, m.name) for m in got] == [("CCO", "ethanol"), ("c1ccccc1", "benzene")]
    with pytest.raises(ValueError, match=r"SMILES line 3: invalid SMILES 'C1CC'.*never closed"):
        Molecule.from_smiles_file("CCO\nCC\nC1CC x\n")
