"""A study's results page from its MLflow runs alone: runs -> summary per setup -> statistics ->
findings -> plots -> ``experiments/<study>/RESULTS.md`` (``page``)."""
