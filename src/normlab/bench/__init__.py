"""``make bench``: speed measured as ratios in one run (``ratios``), and how busy the machine's
other work kept the cores meanwhile (``cpu_share``)."""
