"""``python -m normlab.bench`` (``make bench``): the platform's speed as ratios (``ratios``)."""

from normlab.bench.ratios import main

main()
