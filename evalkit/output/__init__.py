"""What a user keeps: files, figures and reports.

* :mod:`.files` -- estimate outputs written atomically, output-path checks;
* :mod:`.plots` -- matplotlib figures of a sweep; :mod:`.report` -- Markdown + HTML reports;
* :mod:`.plots_compare`, :mod:`.compare_report` -- the figure and report of a model comparison.

May import everything below it (:mod:`evalkit.analysis` and lower); nothing imports it except
the convenience methods of the result objects (on call) and the CLI.
"""
