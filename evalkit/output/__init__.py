"""What a user keeps: files, figures and reports.

* :mod:`.files` -- estimate outputs written atomically, output-path checks;
* :mod:`.plots` -- matplotlib figures of a sweep; :mod:`.report` -- Markdown + HTML reports.

May import everything below it (:mod:`evalkit.analysis` and lower); nothing imports it except
the convenience methods of the result objects (on call) and the CLI.
"""
