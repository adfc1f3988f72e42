"""Snakemake script of rule `exclusions`: the cohort's excluded slides, to results/exclusions.tsv.

A script rather than a shell command: the list of every slide's features file would not fit one
command line for cohorts of thousands of slides.
"""

import logging
from pathlib import Path

logging.basicConfig(
    filename=snakemake.log[0],  # noqa: F821 - injected by Snakemake
    level=logging.INFO,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)

from histofuse.exclusions import collect_exclusions  # noqa: E402

sm = snakemake  # noqa: F821
try:
    collect_exclusions(
        [Path(p) for p in sm.input.features], Path(sm.output.exclusions), encoder=sm.params.encoder
    )
except Exception:
    logging.exception("exclusions failed")
    raise
