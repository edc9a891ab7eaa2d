"""Imported once by the MATH grader's forkserver: load sympy and the LaTeX parser, and warm the parser.

Workers are forked from the forkserver, so each starts with the parser's tables already built
instead of paying ~0.5 s of warm-up per worker (and again for each worker replaced after a timeout).
"""

from harness.grading.math_equiv import warm_up

warm_up()
