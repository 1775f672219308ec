"""``python -m facealign``: the ``facealign`` command (:func:`facealign.cli.main`)."""

from facealign.cli import main

if __name__ == "__main__":
    main(prog_name="facealign")
