"""``python -m normlab.report <study>`` (``make table EXP=<study>``): the study's results page."""

from normlab.report.page import main

main()
