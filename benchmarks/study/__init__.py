"""The GLUE accuracy study's machinery, shared by its drivers (``glue_study``, ``study_explore``, ``study_report``,
``main_job``): :mod:`~benchmarks.study.plan` (what runs), :mod:`~benchmarks.study.runner` (training the runs),
:mod:`~benchmarks.study.records` (what a finished run leaves), :mod:`~benchmarks.study.report` (tables and plots).
"""
