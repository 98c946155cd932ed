"""Evaluation-only content and rain: never imported by training code.

``foreign_rain`` is a second rain renderer written in a different style from
:mod:`j4r.rain` (photometric streaks that fall coherently across frames, fog, bokeh drops on
the lens, splashes), so the ``foreign`` sets measure rain the network was not trained on.
``clean_scenes`` builds rain-free clips chosen to provoke a de-raining net (thin bright
structures, night windows, text, objects that move on their own, camera pans) from the
held-out evaluation content only. ``tests/test_eval_isolation.py`` checks that no training
module imports this package.
"""
