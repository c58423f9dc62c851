"""Published methods that combine passes with training (DESIGN.md contract 10).

A recipe builds candidate Programs with ``Program.clone()``, runs passes on them, trains them
with :mod:`prunec.train`, compares them (:mod:`prunec.ir.similarity`, stability measures) and
keeps one, reporting every step.
"""
__all__: list[str] = []
