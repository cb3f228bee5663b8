"""The demo (``demo.py``: the whole story on the embedded data in one run folder) and the report of a run
(``report.py``: figures and report.md drawn from the files the stages write). Nothing here is part of the
method: the stages it runs are the entry scripts' ``main([...])``; the layout of a run folder is
``DEMO/layout.py``."""
