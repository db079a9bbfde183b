"""Structure v2: gemmi, parsed once, real PDB/mmCIF files, and malformed files refused with the line."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from pydantic import ValidationError

import gflow
from gflow.objects import Structure
from gflow.objects import structure as structure_module
from gflow.serialization import decode, encode
from gflow.testing import run_flow

gemmi = pytest.importorskip("gemmi")

RESOURCES = Path(__file__).parent / "resources" / "objects"
REAL = RESOURCES / "real"
TINY_PDB = RESOURCES / "tiny.pdb"
TINY_CIF = RESOURCES / "tiny.cif"
REAL_FILES = sorted(p.name for p in REAL.iterdir() if p.name not in ("README.md", "HEM.cif"))


def _text(name: str) -> str:
    path = REAL / name
    return gzip.decompress(path.read_bytes()).decode() if name.endswith(".gz") else path.read_text()


def _gemmi_structure(name: str) -> object:
    text = _text(name)
    if ".cif" in name:
        return gemmi.make_structure_from_block(gemmi.cif.read_string(text)[0])
    try:
        return gemmi.read_pdb_string(text)
    except RuntimeError:
        return gemmi.read_pdb_string(text, max_line_length=72)


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_files_agree_with_gemmi(name: str) -> None:
    s = Structure.from_file(REAL / name)
    st = _gemmi_structure(name)
    st.setup_entities()
    model = st[0]
    assert s.format == ("mmcif" if ".cif" in name else "pdb")
    assert s.num_atoms == model.count_atom_sites()
    assert s.chains == list(dict.fromkeys(ch.name for ch in model))
    for chain in model:
        polymer = chain.get_polymer()
        expected = "".join(
            info.one_letter_code.upper() if info.one_letter_code.isalpha() else "X"
            for r in polymer.first_conformer()
            if (info := gemmi.find_tabulated_residue(r.name)).kind != gemmi.ResidueKind.ELS
        )
        if expected:
            assert s.sequence(chain.name) == expected
    assert s.num_residues == len(s.sequence())


def test_modified_and_unknown_residues_follow_seqres() -> None:
    # 4OZ7's SEQRES: 22Q ALA SER CYS SER 22W GLY PRO ASN CYS (22Q, 22W: non-standard, HETATM in the file)
    s = Structure.from_file(REAL / "4oz7.pdb")
    for chain in s.chains:
        names = [n for ln in _text("4oz7.pdb").splitlines() if ln.startswith("SEQRES") and ln[11] == chain
                 for n in ln[19:70].split()]
        letters = [gemmi.find_tabulated_residue(n).one_letter_code.upper() for n in names]
        assert s.sequence(chain) == "".join(c if c.isalpha() else "X" for c in letters)
    assert s.sequence("A") == "XASCSXGPNC"


def test_tiny_pdb_het_residues() -> None:
    s = Structure.from_file(TINY_PDB)
    assert s.sequences() == {"A": "MKTAYI", "B": "GSM"}  # MSE (HETATM) is M; water and calcium ("CA") are not
    assert s.num_residues == 9 and s.num_models == 1


def test_caps_and_modified_hetatm_residues() -> None:
    lines = TINY_PDB.read_text().splitlines()
    chain_a = [ln for ln in lines if ln.startswith("ATOM") and ln[21] == "A"]
    ace = "HETATM  100  C   ACE A   0       9.000   9.000   9.000  1.00 20.00           C"
    cso = [("HETATM" + ln[6:17] + "CSO" + ln[20:]) if ln[17:20] == "THR" else ln for ln in chain_a]
    s = Structure(text="\n".join([ace, *cso, "END"]))
    assert s.sequence() == "MKCAYI"  # CSO (S-hydroxycysteine) -> C, as gemmi's table says; the ACE cap is no residue


def test_mmcif_multiline_fields_validate_and_work() -> None:
    text = TINY_CIF.read_text().replace(
        "ATOM   24  O O   . ILE A 6 ?", "ATOM   24  O\n;O\n;\n   . ILE A 6 ?")
    s = Structure(text=text)
    assert (s.chains, s.num_atoms, s.sequence()) == (["A"], 24, "MKTAYI")
    real = Structure.from_file(REAL / "1pfe.cif.gz")  # ';' text fields in its header categories
    assert real.sequence("A") == "GCGTACGC"


@pytest.mark.parametrize(("text", "message"), [
    ("MODEL        1\n{a}\nMODEL        2\n{a}\nENDMDL\n", "line 13: MODEL, but the MODEL at line 1 has no ENDMDL"),
    ("MODEL        1\n{a}\nENDMDL\nMODEL        2\n{a}\n", "line 14: MODEL without ENDMDL"),
    ("MODEL        1\n{a}\nENDMDL\nMODEL        1\n{a}\nENDMDL\n", "line 14: duplicate MODEL number 1"),
    ("MODEL        1\n{a}\nENDMDL\n{a}\nENDMDL\n", "line 25: ENDMDL without a MODEL"),
    ("{bad}\n", "line 2: x, y, z (columns 31-54) are not numbers"),
    ("{short}\n", "line 7"),
])
def test_malformed_pdb_is_refused_naming_the_line(text: str, message: str) -> None:
    atoms = [ln for ln in TINY_PDB.read_text().splitlines() if ln.startswith("ATOM")][:11]
    bad = "\n".join(atoms[:1] + [atoms[1].replace("11.458", "11.4x8")] + atoms[2:])
    short = "\n".join(atoms[:6] + [atoms[6][:40]] + atoms[7:])
    with pytest.raises(ValidationError) as exc_info:
        Structure(text=text.format(a="\n".join(atoms), bad=bad, short=short), format="pdb")
    (error,) = exc_info.value.errors()
    assert error["loc"] == ("text",)
    assert message in error["msg"]


@pytest.mark.parametrize(("change", "message"), [
    (lambda t: t.replace(" 6 A 1\n#", " 6 A\n#"), "line 4: Wrong number of values in loop _atom_site"),
    (lambda t: t.replace("27.238 14.598", "27.2x8 14.598"), "_atom_site row 24: Cartn_x '27.2x8' is not a number"),
    (lambda t: "data_x\nloop_\n_atom_site.group_PDB\n_atom_site.label_atom_id\n_atom_site.label_comp_id\n"
               "_atom_site.label_asym_id\n_atom_site.Cartn_x\n_atom_site.Cartn_z\nATOM CA ALA A 1.0 2.0\n",
     "lacks the column(s) Cartn_y"),
    (lambda t: t.replace("ATOM   24  O O   . ILE A 6 ?", "ATOM   24  O\n;O\n   . ILE A 6 ?"),
     "unterminated text field"),
    (lambda t: t[: t.index("_atom_site.group_PDB") - 6], "no _atom_site records"),
])
def test_malformed_mmcif_is_refused_at_validation(change: object, message: str) -> None:
    with pytest.raises(ValidationError) as exc_info:
        Structure(text=change(TINY_CIF.read_text()))  # type: ignore[operator]
    (error,) = exc_info.value.errors()
    assert error["loc"] == ("text",) and message in error["msg"]


def test_chemical_component_is_not_a_structure() -> None:
    with pytest.raises(ValidationError, match="no _atom_site records"):
        Structure.from_file(REAL / "HEM.cif")


def test_parsed_once_per_object(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = gemmi.read_pdb_string

    def counting(text: str, *args: object, **kwargs: object) -> object:
        calls.append(len(text))
        return real(text, *args, **kwargs)

    monkeypatch.setattr(gemmi, "read_pdb_string", counting)
    s = Structure.from_file(REAL / "1orc.pdb")
    for _ in range(3):
        assert s.num_atoms and s.chains and s.sequence() and s.sequences() and s.num_residues
    assert len(calls) == 1
    copy = s.with_(name="other")
    assert copy.sequence() == s.sequence() and len(calls) == 2  # a validated copy is a new object


def test_round_trip_and_large_results_go_to_artifacts(gflow_home: Path) -> None:
    s = Structure.from_file(REAL / "5cvz_final.pdb")
    back = decode(encode(s).data)
    assert back == s and back.sequences() == s.sequences()

    @gflow.task
    def load() -> Structure:
        return Structure.from_file(REAL / "5cvz_final.pdb")

    @gflow.flow
    def flow() -> int:
        return load().result().num_atoms

    result = run_flow(flow)
    assert result.value == s.num_atoms
    from gflow.store import open_store

    store = open_store(f"sqlite:///{gflow_home / 'gflow.db'}")
    (rec,) = store.task_runs(result.id)
    assert rec.result_inline is None and rec.result_ref  # > 16 KiB: stored by reference, as a blob
    store.close()


def test_without_gemmi_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from gflow.objects import _deps

    real = _deps.optional
    monkeypatch.setattr(_deps, "optional", lambda name: None if name == "gemmi" else real(name))
    with pytest.raises(_deps.MissingExtra, match=r"pip install 'gflow\[structure\]'"):
        structure_module._parse("pdb", TINY_PDB.read_text())
