"""Tests for gflow.objects: validation, copies, content ids, parsing and ranking."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError
from pydantic_core import ErrorDetails

import gflow.objects as objects
from gflow.objects import (
    Design,
    Experiment,
    GflowObject,
    Molecule,
    Mutation,
    Protein,
    Provenance,
    Score,
    Structure,
)

RESOURCES = Path(__file__).parent / "resources" / "objects"
TINY_PDB = RESOURCES / "tiny.pdb"
TINY_CIF = RESOURCES / "tiny.cif"


def _only_error(exc_info: pytest.ExceptionInfo[ValidationError]) -> ErrorDetails:
    errors = exc_info.value.errors()
    assert len(errors) == 1
    return errors[0]


def test_all_is_pinned() -> None:
    assert sorted(objects.__all__) == [
        "Dataset", "Design", "Experiment", "GflowObject", "Model", "Molecule", "Mutation",
        "Protein", "Provenance", "Score", "Structure",
    ]  # fmt: skip
    for name in objects.__all__:
        assert getattr(objects, name).__module__.startswith("gflow.objects")


def test_import_is_cheap() -> None:
    code = ("import sys, gflow.objects; "
            "print(sorted(m for m in ('numpy', 'rdkit', 'torch', 'gemmi') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- Protein -----------------------------------------------------------------------------------


def test_protein_cleans_sequence() -> None:
    protein = Protein(sequence="  mkt ay\niak\tqr \n")
    assert protein.sequence == "MKTAYIAKQR"
    assert len(protein) == 10


def test_protein_accepts_ambiguous_and_rare_residues() -> None:
    assert Protein(sequence="ACXUOBZJ").sequence == "ACXUOBZJ"


def test_protein_invalid_residue_names_field_residue_and_position() -> None:
    with pytest.raises(ValidationError) as exc_info:
        Protein(sequence="MKTA 1Q")  # whitespace is removed first, so 1 is residue 5
    error = _only_error(exc_info)
    assert error["loc"] == ("sequence",)
    assert "invalid residue '1' at position 5" in error["msg"]
    assert "ACDEFGHIKLMNPQRSTVWY" in error["msg"]
    assert "sequence" in str(exc_info.value)


@pytest.mark.parametrize("sequence", ["", "   \n "])
def test_protein_empty_sequence_rejected(sequence: str) -> None:
    with pytest.raises(ValidationError) as exc_info:
        Protein(sequence=sequence)
    assert _only_error(exc_info)["loc"] == ("sequence",)


def test_protein_from_bare_string() -> None:
    assert Protein.model_validate("mktayiakqr") == Protein(sequence="MKTAYIAKQR")
    assert TypeAdapter(Protein).validate_python("MKT").sequence == "MKT"
    assert TypeAdapter(list[Protein]).validate_python(["MK", "TA"])[1].sequence == "TA"
    assert Design(protein="MKT").protein.sequence == "MKT"  # type: ignore[arg-type, unused-ignore]
    with pytest.raises(ValidationError):
        Protein.model_validate("MK1")


def test_protein_metadata_must_be_json_safe() -> None:
    protein = Protein(sequence="MK", metadata={"flag": True, "n": 3, "x": 0.5, "s": "y"})
    assert protein.metadata == {"flag": True, "n": 3, "x": 0.5, "s": "y"}
    assert type(protein.metadata["flag"]) is bool and type(protein.metadata["n"]) is int
    with pytest.raises(ValidationError):
        Protein(sequence="MK", metadata={"x": float("nan")})
    with pytest.raises(ValidationError):
        Protein(sequence="MK", metadata={"x": [1, 2]})  # type: ignore[dict-item, unused-ignore]


# --- Mutation ----------------------------------------------------------------------------------


def test_mutation_parse_and_str() -> None:
    mutation = Mutation.parse("a23g")
    assert (mutation.position, mutation.wt, mutation.mt) == (23, "A", "G")
    assert str(mutation) == "A23G"
    assert Mutation.model_validate("K5R") == Mutation(position=5, wt="K", mt="R")


@pytest.mark.parametrize("text", ["A23", "23G", "AA23G", "A-1G", "A2.5G", ""])
def test_mutation_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(ValidationError, match=r"expected e\.g\. 'A23G'"):
        Mutation.parse(text)


def test_mutation_validates_fields() -> None:
    with pytest.raises(ValidationError) as exc_info:
        Mutation(position=0, wt="A", mt="G")
    assert _only_error(exc_info)["loc"] == ("position",)
    with pytest.raises(ValidationError) as exc_info:
        Mutation(position=3, wt="A", mt="9")
    assert _only_error(exc_info)["loc"] == ("mt",)
    with pytest.raises(ValidationError) as exc_info:
        Mutation(position=3, wt="AG", mt="G")
    assert _only_error(exc_info)["loc"] == ("wt",)


def test_mutate_returns_new_protein_with_suffixed_name() -> None:
    parent = Protein(sequence="MKTAYIAKQR", name="parent", metadata={"source": "test"})
    child = parent.mutate("A4G")
    assert child.sequence == "MKTGYIAKQR"
    assert child.name == "parent_A4G"
    assert child.metadata == {"source": "test"}
    assert parent.sequence == "MKTAYIAKQR"  # unchanged
    double = parent.mutate(Mutation(position=2, wt="K", mt="R"), "R10K")
    assert double.sequence == "MRTAYIAKQK"
    assert double.name == "parent_K2R_R10K"
    assert Protein(sequence="MKT").mutate("K2A").name is None


def test_mutate_checks_wild_type() -> None:
    protein = Protein(sequence="MKTAYIAKQR")
    with pytest.raises(ValueError, match=r"position 2 holds 'K', not 'A'"):
        protein.mutate("A2G")


def test_mutate_rejects_out_of_range_and_repeated_positions() -> None:
    protein = Protein(sequence="MKT")
    with pytest.raises(ValueError, match="position 4 is beyond the sequence length 3"):
        protein.mutate("A4G")
    with pytest.raises(ValueError, match="position 2 is mutated twice"):
        protein.mutate("K2A", "K2R")


def test_mutations_from() -> None:
    parent = Protein(sequence="MKTAYIAKQR")
    child = Protein(sequence="MRTAYIAKQW")
    assert [str(m) for m in child.mutations_from(parent)] == ["K2R", "R10W"]
    assert parent.mutations_from(parent) == []
    assert parent.mutate(*child.mutations_from(parent)) == child
    with pytest.raises(ValueError, match="different lengths"):
        child.mutations_from(Protein(sequence="MKT"))


# --- FASTA -------------------------------------------------------------------------------------

FASTA = """\
; a comment line
>sp|P1|ONE first protein
MKTAYIAK
QRQISFVK

>two
acdef
>
GHIK
"""


def test_from_fasta_text() -> None:
    proteins = Protein.from_fasta(FASTA)
    assert [p.sequence for p in proteins] == ["MKTAYIAKQRQISFVK", "ACDEF", "GHIK"]
    assert [p.name for p in proteins] == ["sp|P1|ONE", "two", None]
    assert proteins[0].metadata == {"description": "first protein"}
    assert proteins[1].metadata == {}


def test_from_fasta_path(tmp_path: Path) -> None:
    path = tmp_path / "in.fasta"
    path.write_text(FASTA)
    assert Protein.from_fasta(path) == Protein.from_fasta(str(path)) == Protein.from_fasta(FASTA)


def test_fasta_round_trip() -> None:
    proteins = Protein.from_fasta(FASTA)[:2]
    text = "".join(p.to_fasta(width=5) for p in proteins)
    assert text.splitlines()[:5] == [">sp|P1|ONE first protein", "MKTAY", "IAKQR", "QISFV", "K"]
    assert Protein.from_fasta(text) == proteins
    assert Protein(sequence="MKT").to_fasta(width=0) == ">protein\nMKT\n"


def test_from_fasta_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="before the first '>' header"):
        Protein.from_fasta(";comment\nMK\n>a\nMK\n")
    with pytest.raises(ValueError, match=r"FASTA record 'bad' \(record 2, line 3\): invalid residue '8' at position 2"):
        Protein.from_fasta(">ok\nMK\n>bad\nM8\n")
    with pytest.raises(ValueError, match="sequence is empty"):
        Protein.from_fasta(">empty\n>next\nMK\n")
    with pytest.raises(ValueError, match="FASTA text starting with '>'"):
        Protein.from_fasta(str(tmp_path / "missing.fasta"))


# --- GflowObject behaviour: frozen, content ids, copies, round trips ---------------------------


def test_objects_are_frozen_and_forbid_extra_fields() -> None:
    protein = Protein(sequence="MKT")
    with pytest.raises(ValidationError, match="frozen"):
        protein.sequence = "AAA"  # type: ignore[misc, unused-ignore]
    with pytest.raises(ValidationError) as exc_info:
        Protein(sequence="MKT", organism="human")  # type: ignore[call-arg, unused-ignore]
    assert _only_error(exc_info)["loc"] == ("organism",)


def test_content_id_is_sha256_of_canonical_json() -> None:
    protein = Protein(sequence="MKT", name="ü", metadata={"b": 2, "a": 1})
    expected_json = '{"metadata":{"a":1,"b":2},"name":"ü","sequence":"MKT"}'
    assert protein.canonical_json() == expected_json
    assert protein.content_id == "sha256:" + hashlib.sha256(expected_json.encode()).hexdigest()


def test_content_id_stable_and_sensitive_to_changes() -> None:
    a = Protein(sequence="MKT", metadata={"a": 1, "b": 2})
    b = Protein(sequence="mkt", metadata={"b": 2, "a": 1})
    assert a.content_id == b.content_id
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a.with_(name="x").content_id != a.content_id
    assert a.with_(metadata={"a": 1, "b": 3}).content_id != a.content_id
    # Equal content in a different class is a different object.
    assert Protein(sequence="MKT") != Design(protein="MKT")  # type: ignore[arg-type, unused-ignore]


def test_content_id_is_cached_and_copies_do_not_reuse_it() -> None:
    protein = Protein(sequence="MKT")
    assert "content_id" not in protein.__dict__
    first = protein.content_id
    assert protein.__dict__["content_id"] == first
    assert protein.content_id is first
    assert "content_id" not in protein.model_dump()
    copied = protein.model_copy(update={"name": "renamed"})
    assert copied.content_id == Protein(sequence="MKT", name="renamed").content_id != first
    assert protein.model_copy().content_id == first


def test_with_revalidates() -> None:
    protein = Protein(sequence="MKT", name="p")
    changed = protein.with_(sequence="acd ef")
    assert changed.sequence == "ACDEF" and changed.name == "p"
    with pytest.raises(ValidationError, match="invalid residue '#' at position 2"):
        protein.with_(sequence="M#")
    with pytest.raises(ValidationError) as exc_info:
        protein.with_(nmae="typo")
    assert _only_error(exc_info)["loc"] == ("nmae",)


def _full_experiment() -> Experiment:
    parent = Design(protein=Protein(sequence="MKTAYI", name="wt"))
    child = Design(
        protein=parent.protein.mutate("A4G"),
        structure=Structure.from_file(TINY_PDB),
        molecule=Molecule(smiles="CC(=O)O", name="acetate", metadata={"mw": 60.05}),
        scores=(Score(name="plddt", value=87.5, provenance={"model": "esmfold"}),),
        parents=(parent.content_id,),
        produced_by=Provenance(task="examples.design:mutate", run_id="r1", inputs=(parent.protein.content_id,)),
    )
    return Experiment(
        name="demo",
        designs=(parent, child),
        measurements=(Score(name="kd", value=12.0, units="nM", higher_is_better=False),),
        description="round trip",
        metadata={"plate": 3},
    )


def test_round_trip_through_json() -> None:
    experiment = _full_experiment()
    data = json.loads(experiment.canonical_json())
    rebuilt = Experiment.model_validate(data)
    assert rebuilt == experiment
    assert rebuilt.content_id == experiment.content_id
    assert isinstance(rebuilt.designs, tuple) and isinstance(rebuilt.designs[1].parents, tuple)
    assert rebuilt.designs[1].structure is not None and rebuilt.designs[1].structure.sequence() == "MKTAYIGSM"
    assert Experiment.model_validate_json(experiment.model_dump_json()) == experiment
    for obj in [experiment.designs[1].protein, Mutation.parse("A4G"), experiment.measurements[0]]:
        assert type(obj).model_validate(obj.model_dump(mode="json")) == obj


def test_tuple_collections_make_designs_hashable() -> None:
    experiment = _full_experiment()
    assert len({experiment, Experiment.model_validate(experiment.model_dump(mode="json"))}) == 1
    assert isinstance(experiment, GflowObject)


# --- Molecule ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "smiles",
    [
        "C", "CC(=O)O", "c1ccccc1", "OC[C@@H](O)C=O", "[NH4+].[Cl-]", "C%10CC%10", "F/C=C/F",
        "ClC(Br)(I)F", "[2H]C([2H])([2H])[2H]", "C1CC2CCC1CC2", "N#N", "[se]1cccc1", "*C",
    ],
)  # fmt: skip
def test_molecule_accepts_valid_smiles(smiles: str) -> None:
    from rdkit import Chem

    molecule = Molecule(smiles=f"  {smiles}\n")
    assert molecule.smiles == Chem.MolToSmiles(Chem.MolFromSmiles(smiles))
    assert molecule.given_smiles == smiles


@pytest.mark.parametrize(
    ("smiles", "message"),
    [
        ("", "SMILES is empty"),
        ("CCX", "unexpected character 'X' at position 3"),
        ("CC C", "whitespace at position 3: a SMILES has none"),
        ("C1CC", "ring closure '1' opened at position 2 is never closed"),
        ("C(C", "1 unclosed '('"),
        ("CC)", "unbalanced ')' at position 3"),
        ("C()C", "empty or dangling branch"),
        ("[Na+", "unclosed '[' at position 1"),
        ("C]", "unbalanced ']' at position 2"),
        ("[+]", "invalid bracket atom '[+]'"),
        ("CC=", "dangling bond"),
        ("=CC", "bond '=' at position 1 does not follow an atom"),
        ("C%1C", "'%' must be followed by two digits"),
        ("1CC1", "ring closure '1' at position 1 does not follow an atom"),
        ("C\u00b2CC\u00b2", "non-ASCII character '\u00b2' at position 2"),
        ("C1CC1C1", "ring closure '1' opened at position 7 is never closed"),
        ("C11", "closes on the atom that opened it"),
        ("C(C)(C)(C)(C)C", "Explicit valence"),
        ("c1cccc1", "RDKit"),
    ],
)
def test_molecule_rejects_invalid_smiles(smiles: str, message: str) -> None:
    with pytest.raises(ValidationError) as exc_info:
        Molecule(smiles=smiles)
    error = _only_error(exc_info)
    assert error["loc"] == ("smiles",)
    assert message in error["msg"]


# --- Structure ---------------------------------------------------------------------------------


def test_structure_parses_tiny_pdb() -> None:
    structure = Structure.from_file(TINY_PDB)
    assert structure.format == "pdb"
    assert structure.name == "tiny"
    assert structure.num_atoms == 38
    assert structure.chains == ["A", "B"]
    assert structure.sequence("A") == "MKTAYI"
    assert structure.sequence("B") == "GSM"  # MSE is selenomethionine; calcium's "CA" is not a residue
    assert structure.sequence() == "MKTAYIGSM"
    with pytest.raises(ValueError, match=r"no chain 'C' in structure \(chains: \['A', 'B'\]\)"):
        structure.sequence("C")


def test_structure_parses_tiny_mmcif() -> None:
    structure = Structure.from_file(TINY_CIF)
    assert structure.format == "mmcif"
    assert structure.num_atoms == 24
    assert structure.chains == ["A"]
    assert structure.sequence() == structure.sequence("A") == "MKTAYI"


def test_structure_format_inferred_from_content(tmp_path: Path) -> None:
    assert Structure(text=TINY_CIF.read_text()).format == "mmcif"
    assert Structure(text=TINY_PDB.read_text()).format == "pdb"
    odd = tmp_path / "model.txt"
    odd.write_text(TINY_CIF.read_text())
    assert Structure.from_file(odd).format == "mmcif"
    packed = tmp_path / "packed.pdb.gz"
    packed.write_bytes(gzip.compress(TINY_PDB.read_bytes()))
    unpacked = Structure.from_file(packed)
    assert (unpacked.format, unpacked.name, unpacked.num_atoms) == ("pdb", "packed", 38)


def test_structure_unknown_residue_and_multiple_models() -> None:
    lines = [line for line in TINY_PDB.read_text().splitlines() if line.startswith("ATOM") and line[21] == "A"]
    renamed = [line.replace("TYR", "XYZ") for line in lines]
    two_models = "\n".join(["MODEL        1", *renamed, "ENDMDL", "MODEL        2", *lines, "ENDMDL", "END"])
    structure = Structure(text=two_models)
    assert structure.num_atoms == 24  # the first model only
    assert structure.sequence() == "MKTAXI"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"text": "HEADER nothing here\nEND\n"}, "PDB text has no ATOM or HETATM records"),
        ({"text": "", "format": "pdb"}, "PDB text has no ATOM or HETATM records"),
        ({"text": "# comment\nloop_\n", "format": "mmcif"}, "must start with a 'data_' block header"),
        ({"text": TINY_CIF.read_text(), "format": "pdb"}, "perhaps it is cif not pdb"),
    ],
)
def test_structure_rejects_bad_text(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as exc_info:
        Structure(**kwargs)
    error = _only_error(exc_info)
    assert error["loc"] == ("text",)
    assert message in error["msg"]


def test_structure_rejects_unknown_format() -> None:
    with pytest.raises(ValidationError) as exc_info:
        Structure(text=TINY_PDB.read_text(), format="xyz")  # type: ignore[arg-type, unused-ignore]
    assert _only_error(exc_info)["loc"] == ("format",)


# --- Score -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf"), "nan"])
def test_score_rejects_non_finite(value: object) -> None:
    with pytest.raises(ValidationError) as exc_info:
        Score(name="fitness", value=value)  # type: ignore[arg-type, unused-ignore]
    error = _only_error(exc_info)
    assert error["loc"] == ("value",)
    assert "finite" in error["msg"]


def test_score_fields_and_direction() -> None:
    score = Score(name="kd", value=3, units="nM", higher_is_better=False, provenance={"model": "m"})
    assert score.value == 3.0 and isinstance(score.value, float)
    assert score.is_better_than(Score(name="kd", value=5, higher_is_better=False))
    assert not Score(name="pll", value=1).is_better_than(Score(name="pll", value=1))
    with pytest.raises(ValidationError) as exc_info:
        Score(name="", value=1)
    assert _only_error(exc_info)["loc"] == ("name",)


# --- Design, Provenance, Experiment ------------------------------------------------------------


def test_design_scores() -> None:
    design = Design(protein=Protein(sequence="MKT"))
    assert design.score("pll") is None
    scored = design.with_score(Score(name="pll", value=-1.5)).with_score(Score(name="plddt", value=80))
    assert design.scores == ()
    assert [s.name for s in scored.scores] == ["pll", "plddt"]
    rescored = scored.with_score(Score(name="pll", value=-0.5))
    assert rescored.score("pll") == Score(name="pll", value=-0.5)
    assert [s.name for s in rescored.scores] == ["plddt", "pll"]
    with pytest.raises(ValidationError, match="duplicate score name 'pll'"):
        Design(protein="MKT", scores=(Score(name="pll", value=1), Score(name="pll", value=2)))  # type: ignore[arg-type, unused-ignore]


def test_design_parents_and_provenance_validation() -> None:
    with pytest.raises(ValidationError) as exc_info:
        Design(protein="MKT", parents=("not-a-content-id",))  # type: ignore[arg-type, unused-ignore]
    assert _only_error(exc_info)["loc"] == ("parents", 0)
    with pytest.raises(ValidationError) as exc_info:
        Provenance()  # type: ignore[call-arg, unused-ignore]
    assert _only_error(exc_info)["loc"] == ("task",)
    provenance = Provenance(task="examples.design:score")
    assert (provenance.run_id, provenance.task_run_id, provenance.inputs) == (None, None, ())


def test_design_derive_links_parent() -> None:
    parent = Design(protein="MKTAYI", scores=(Score(name="pll", value=1),))  # type: ignore[arg-type, unused-ignore]
    child = parent.derive(protein=parent.protein.mutate("A4G"))
    assert child.parents == (parent.content_id,)
    assert child.scores == ()
    assert child.protein.sequence == "MKTGYI"


def test_experiment_ranked() -> None:
    def design(sequence: str, *scores: Score) -> Design:
        return Design(protein=Protein(sequence=sequence), scores=scores)

    a = design("AAA", Score(name="pll", value=1.0), Score(name="kd", value=50, higher_is_better=False))
    b = design("CCC", Score(name="pll", value=3.0), Score(name="kd", value=5, higher_is_better=False))
    c = design("DDD", Score(name="pll", value=2.0))
    d = design("EEE", Score(name="pll", value=3.0))
    experiment = Experiment(name="e", designs=(a, b, c, d))
    assert experiment.ranked("pll") == (b, d, c, a)  # ties keep design order
    assert experiment.ranked("pll", top=2) == (b, d)
    assert experiment.ranked("pll", top=0) == ()
    assert experiment.ranked("kd") == (b, a)  # lower is better; designs without kd are left out
    assert experiment.ranked("missing") == ()
    with pytest.raises(ValueError, match="top must be >= 0"):
        experiment.ranked("pll", top=-1)
    mixed = experiment.with_designs([design("FFF", Score(name="kd", value=1.0))])
    with pytest.raises(ValueError, match="disagree"):
        mixed.ranked("kd")


def test_experiment_lineage_and_ancestors() -> None:
    root = Design(protein=Protein(sequence="MKTAYI"))
    child = root.derive(protein=root.protein.mutate("A4G"))
    grandchild = child.derive(protein=child.protein.mutate("K2R"))
    other = Design(protein=Protein(sequence="WWW"))
    merged = Design(protein=Protein(sequence="MRTGYW"), parents=(grandchild.content_id, other.content_id))
    experiment = Experiment(name="lineage", designs=(root, child, grandchild, other, merged))
    assert experiment.lineage() == {
        root.content_id: (),
        child.content_id: (root.content_id,),
        grandchild.content_id: (child.content_id,),
        other.content_id: (),
        merged.content_id: (grandchild.content_id, other.content_id),
    }
    assert experiment.ancestors(merged.content_id) == [
        grandchild.content_id, other.content_id, child.content_id, root.content_id,
    ]  # fmt: skip
    assert experiment.ancestors(root.content_id) == []
    assert experiment.design(child.content_id) is child
    assert experiment.design("sha256:" + "0" * 64) is None


def test_experiment_requires_name_and_finite_measurements() -> None:
    with pytest.raises(ValidationError) as exc_info:
        Experiment(name="")
    assert _only_error(exc_info)["loc"] == ("name",)
    with pytest.raises(ValidationError) as exc_info:
        Experiment(name="e", measurements=({"name": "kd", "value": "inf"},))  # type: ignore[arg-type, unused-ignore]
    assert _only_error(exc_info)["loc"] == ("measurements", 0, "value")
