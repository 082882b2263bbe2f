"""``make ui``: each study's runs page in the MLflow UI, in model-training mode
(``normlab.tracking.addresses``), printed before the UI starts."""

from __future__ import annotations

import os
import sys

from normlab import config
from normlab.tracking.addresses import study_pages


def main() -> None:
    base = sys.argv[1] if len(sys.argv) > 1 else f"http://127.0.0.1:{os.environ.get('PORT', '5000')}"
    pages = study_pages(config.tracking_uri(), base)
    if not pages:
        print("  no study recorded yet: make sweep")
    for study, page in pages:
        print(f"  {study:<16} {page}", flush=True)


if __name__ == "__main__":
    main()
