"""Results documents are rewritten section by section: a rerun replaces its own section only."""
from bes_jax.eval.report import replace_section


def test_a_heading_that_prefixes_another_replaces_only_its_own_section(tmp_path):
    doc = tmp_path / "results.md"
    doc.write_text("# Results\n\n## Learned (`learner=es`)\n\nes 1\n\n## Other\n\nkept\n")
    replace_section(doc, "## Learned", "## Learned\n\ndefault 1\n")  # absent: appended
    replace_section(doc, "## Learned", "## Learned\n\ndefault 2\n")
    replace_section(doc, "## Learned (`learner=es`)", "## Learned (`learner=es`)\n\nes 2\n")
    assert doc.read_text() == ("# Results\n\n## Learned (`learner=es`)\n\nes 2\n\n## Other\n\nkept\n\n"
                               "## Learned\n\ndefault 2\n")


def test_a_missing_document_starts_with_its_title(tmp_path):
    doc = tmp_path / "new.md"
    replace_section(doc, "## A", "## A\n\na\n", title="# Validation\n")
    assert doc.read_text() == "# Validation\n\n## A\n\na\n"
