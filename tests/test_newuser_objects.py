"""Issue 23 items 2 (SMILES part), 8 and 10: SMILES RDKit reads are not refused first, results for people
(``summary()``, ``gflow run --output short``), no-op mutations refused and readable mutant names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import RESOURCES, ROOT, cli
from pydantic import ValidationError

from gflow.cli import _short_text
from gflow.objects import Design, Experiment, GflowObject, Model, Molecule, Mutation, Protein, Score, Structure
from gflow.objects._smiles import check_smiles_syntax
from gflow.objects.model import FileEntry

PARENT = Protein(sequence="MKTAYIAKQRQISFVKSHFSRQ", name="parent")
DIGEST = "sha256:" + "ab" * 32


# item 2: a SMILES that RDKit parses is not refused by gflow's own syntax check first

@pytest.mark.parametrize("smiles", ["[Uuo]", "[Uup]", "C[Uus]C", "[2Uuo+]", "[Uun]"])
def test_three_letter_element_symbols_pass_the_syntax_check(smiles: str) -> None:
    assert check_smiles_syntax(smiles).atoms == smiles.count("[") + smiles.count("C")
    chem = pytest.importorskip("rdkit.Chem")
    assert chem.MolFromSmiles(smiles) is not None
    assert Molecule(smiles=smiles).smiles == chem.MolToSmiles(chem.MolFromSmiles(smiles))


@pytest.mark.parametrize(("smiles", "canonical"), [("[#6]", "[C]"), ("[#26+2]", "[Fe+2]"), ("[#118]", "[Og]"),
                                                ("C~C", "C~C")])
def test_atomic_numbers_and_any_bonds_that_rdkit_reads_are_accepted(smiles: str, canonical: str) -> None:
    check_smiles_syntax(smiles)
    pytest.importorskip("rdkit.Chem")
    assert Molecule(smiles=smiles).smiles == canonical


@pytest.mark.parametrize(("smiles", "message"), [
    ("[#119]", "invalid bracket atom '[#119]' at position 1"),  # RDKit fails an assertion (a RuntimeError) on it
    ("C1CC1 cyclopropane", "whitespace at position 6: a SMILES has none"),
])
def test_what_rdkit_cannot_take_safely_is_still_refused_first(smiles: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_smiles_syntax(smiles)
    with pytest.raises(ValidationError, match=re.escape(message)):
        Molecule(smiles=smiles)


# item 10: no-op mutations and names

def test_a_no_op_mutation_is_refused_in_one_line() -> None:
    with pytest.raises(ValueError, match=r"^mutation A4A changes nothing \(A stays A at position 4\); pick another "
                                         r"residue$"):
        PARENT.mutate("A4A")
    with pytest.raises(ValidationError, match="mutation K2K changes nothing"):
        Mutation(position=2, wt="K", mt="K")
    assert PARENT.mutate("A4G").sequence[3] == "G"


def test_a_second_mutation_at_a_position_rewrites_the_name() -> None:
    first = PARENT.mutate("K2W")
    assert first.name == "parent_K2W"
    assert first.mutate("W2E").name == "parent_K2E"
    assert first.mutate("W2E").mutate("E2K").name == "parent"  # back to the wild type
    many = first.mutate("W2E", "T3A").mutate("Y5G")
    assert many.name == "parent_K2E_T3A_Y5G"
    assert many.mutate("A3T").name == "parent_K2E_Y5G"
    # a name part that only looks like a mutation (this sequence does not hold its mutant residue) is kept
    assert Protein(sequence="MKT", name="lysozyme_T4L").mutate("M1A").name == "lysozyme_T4L_M1A"


def test_the_readme_tutorial_makes_no_no_op_mutation(gflow_home, tmp_path: Path) -> None:
    text = (ROOT / "README.md").read_text()
    block = text[text.index("## Tutorial"):]
    code = block[block.index("```python\n") + 10: block.index("\n```", block.index("```python\n"))]
    (tmp_path / "tutorial.py").write_text(code + "\n")
    r = cli("run", f"{tmp_path / 'tutorial.py'}:design", "--param", "parent=MKTAYIAKQRQ", "--param", "top=2",
            "--no-progress", "--output", "short", env={"GFLOW_HOME": str(gflow_home)}, cwd=tmp_path)
    if 'f"{parent.sequence[i]}{i + 1}A"' in code:  # the tutorial as filed: its A4A is now refused, in one line
        assert r.returncode != 0 and "mutation A4A changes nothing" in r.stderr, r.stderr
    else:
        assert r.returncode == 0, r.stderr
        rows = r.stdout.splitlines()  # the sequences themselves, no content hashes
        assert len(rows) == 2 and all(re.fullmatch(r"  [12]\. Protein M[A-Z]{10} \(11 aa\)", row) for row in rows), rows


# item 8: results for people

def test_summaries_show_sequences_smiles_scores_and_paths() -> None:
    long = Protein(sequence="MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQ", name="p1")
    assert long.summary() == f"Protein p1: {long.sequence[:29]}...{long.sequence[-8:]} (66 aa)"
    assert Protein(sequence="MKT").summary() == "Protein MKT (3 aa)"
    assert Score(name="esm2_pll", value=-12.345678, units="nats").summary() == "Score esm2_pll=-12.3457 nats"
    assert Score(name="kd", value=3.5, higher_is_better=False).summary() == "Score kd=3.5, lower is better"
    assert Molecule(smiles="OCC", name="ethanol").summary() == f"Molecule ethanol: {Molecule(smiles='OCC').smiles}"
    structure = Structure.from_file(RESOURCES / "objects" / "tiny.pdb")
    assert structure.summary() == "Structure tiny (pdb): 1 model, 2 chains, 9 residues, 38 atoms; MKTAYIGSM"
    design = Design(protein=PARENT.mutate("K2W"), scores=(Score(name="pll", value=-1.5),),
                    molecule=Molecule(smiles="CCO"), structure=structure)
    assert design.summary() == ("Design parent_K2W: MWTAYIAKQRQISFVKSHFSRQ (22 aa); pll=-1.5; molecule CCO; "
                                "structure tiny")
    model = Model(name="esm", source="/models/esm", files=(FileEntry(path="config.json", digest=DIGEST, size=1500),),
                  size=1500)
    assert model.summary() == "Model esm: dir /models/esm (1 files, 1.5 kB: config.json)"
    for obj in (long, design, model, structure, Mutation.parse("A4G")):
        assert obj.content_id[7:19] not in obj.summary()


def test_experiment_summary_shows_its_table_and_files() -> None:
    exp = Experiment(name="design_loop:parent", designs=(Design(protein=PARENT),),
                     measurements=(Score(name="round1_elite_top", value=-2.25),),
                     description="round\tdesigns\n1\t32\n2\t32",
                     metadata={"summary_png": "/tmp/r/design_loop_scores.png", "model": "facebook/esm2", "rounds": 2})
    assert exp.summary().splitlines() == [
        "Experiment design_loop:parent: 1 designs, 1 measurements", "  round1_elite_top=-2.25",
        "  round\tdesigns", "  1\t32", "  2\t32", "  summary_png: /tmp/r/design_loop_scores.png"]
    assert _short_text(exp) == exp.summary()
    listed = _short_text([exp, {"a": 1}]).splitlines()
    assert listed[0] == "  1. Experiment design_loop:parent: 1 designs, 1 measurements"
    assert listed[1] == "       round1_elite_top=-2.25"
    assert listed[-1] == '  2. {"a": 1}'


def test_cli_short_output_shows_sequences_not_hashes(gflow_home) -> None:
    flows = str(RESOURCES / "flows_basic.py")
    r = cli("run", f"{flows}:protein_flow", "--param", "parent=MKTAYIAK", "--param", "n=2", "--no-progress",
            "--output", "short", env={"GFLOW_HOME": str(gflow_home)})
    assert r.returncode == 0, r.stderr
    rows = r.stdout.splitlines()
    assert rows[0].startswith("  1. Score ") and "=" in rows[0], r.stdout
    assert not re.search(r"\bScore [0-9a-f]{12}$", r.stdout), r.stdout


class _RoundRow(GflowObject):  # an object of a user's own, as the examples define them
    round: int
    mean_pll: float
    elite: tuple[str, ...] = ()
    parent: Protein | None = None
    note: str | None = None


def test_users_objects_summarise_their_fields_by_default() -> None:
    row = _RoundRow(round=2, mean_pll=-3.14159265, elite=("a", "b"), parent=Protein(sequence="MKT", name="p"))
    assert row.summary() == "_RoundRow round=2, mean_pll=-3.14159, elite=(2 items), parent=Protein p: MKT (3 aa)"
    assert _RoundRow(round=1, mean_pll=2.0).summary() == "_RoundRow round=1, mean_pll=2"
